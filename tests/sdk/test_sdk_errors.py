"""gRPC failures become typed SparegridErrors in one place; only transient ones are retried."""

from collections.abc import Callable
from typing import Any

import grpc
import pytest
from grpc import aio

from sparegrid.sdk import errors
from sparegrid.sdk.retry import NO_RETRY, RetryPolicy, acall, call, is_transient

FAST = RetryPolicy(max_attempts=5, initial_backoff=0.0, max_backoff=0.0)


class FakeSyncError(grpc.RpcError):
    """What grpc's sync API raises: an RpcError that is also a Call."""

    def __init__(self, status: grpc.StatusCode, details: str, code: str | None = None) -> None:
        super().__init__(details)
        self._status = status
        self._details = details
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._status

    def details(self) -> str | None:
        return self._details

    def trailing_metadata(self) -> Any:
        return (("sparegrid-code", self._code),) if self._code else ()


def aio_error(status: grpc.StatusCode, details: str, code: str | None = None) -> aio.AioRpcError:
    trailing = aio.Metadata(("sparegrid-code", code)) if code else aio.Metadata()
    return aio.AioRpcError(status, aio.Metadata(), trailing, details)


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (grpc.StatusCode.UNAUTHENTICATED, errors.AuthenticationError),
        (grpc.StatusCode.PERMISSION_DENIED, errors.PermissionDeniedError),
        (grpc.StatusCode.NOT_FOUND, errors.NotFoundError),
        (grpc.StatusCode.INVALID_ARGUMENT, errors.InvalidArgumentError),
        (grpc.StatusCode.FAILED_PRECONDITION, errors.FailedPreconditionError),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, errors.ResourceExhaustedError),
        (grpc.StatusCode.UNAVAILABLE, errors.UnavailableError),
        (grpc.StatusCode.DEADLINE_EXCEEDED, errors.DeadlineExceededError),
        (grpc.StatusCode.INTERNAL, errors.InternalError),
        (grpc.StatusCode.DATA_LOSS, errors.SparegridError),
    ],
)
def test_status_maps_to_class(status: grpc.StatusCode, cls: type[errors.SparegridError]) -> None:
    for exc in (FakeSyncError(status, "boom", "SOME_CODE"), aio_error(status, "boom", "SOME_CODE")):
        err = errors.from_rpc_error(exc)
        assert type(err) is cls
        assert (err.code, err.message, err.status) == ("SOME_CODE", "boom", status)


def test_code_falls_back_to_status_name() -> None:
    err = errors.from_rpc_error(aio_error(grpc.StatusCode.UNAVAILABLE, "connection refused"))
    assert err.code == "UNAVAILABLE"
    assert str(err) == "connection refused"


def test_sparegrid_code_from_metadata() -> None:
    exc = FakeSyncError(grpc.StatusCode.NOT_FOUND, "no job j1", "JOB_NOT_FOUND")
    err = errors.from_rpc_error(exc)
    assert isinstance(err, errors.NotFoundError)
    assert err.code == "JOB_NOT_FOUND"
    assert "JOB_NOT_FOUND" in repr(err)


def test_bare_rpc_error_is_unknown() -> None:
    err = errors.from_rpc_error(grpc.RpcError("odd"))
    assert type(err) is errors.SparegridError
    assert err.code == "UNKNOWN"


def test_deadline_error_is_a_timeout() -> None:
    assert issubclass(errors.DeadlineExceededError, TimeoutError)
    assert issubclass(errors.VerificationError, errors.SparegridError)


@pytest.mark.parametrize(
    ("status", "code", "idempotent", "expected"),
    [
        (grpc.StatusCode.UNAVAILABLE, "UNAVAILABLE", False, True),
        (grpc.StatusCode.DEADLINE_EXCEEDED, "DEADLINE_EXCEEDED", True, True),
        (grpc.StatusCode.DEADLINE_EXCEEDED, "DEADLINE_EXCEEDED", False, False),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "QUOTA_EXCEEDED", True, False),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "BLOB_TOO_LARGE", True, False),
        (grpc.StatusCode.NOT_FOUND, "JOB_NOT_FOUND", True, False),
        (grpc.StatusCode.INTERNAL, "INTERNAL", True, False),
    ],
)
def test_is_transient(status: grpc.StatusCode, code: str, idempotent: bool, expected: bool) -> None:
    err = errors.error_class(status)(code, "x", status)
    assert is_transient(err, idempotent) is expected


def failing(times: int, exc: grpc.RpcError) -> tuple[list[int], Callable[[], str]]:
    calls: list[int] = []

    def fn() -> str:
        calls.append(1)
        if len(calls) <= times:
            raise exc
        return "ok"

    return calls, fn


def test_call_retries_unavailable_then_succeeds() -> None:
    calls, fn = failing(2, FakeSyncError(grpc.StatusCode.UNAVAILABLE, "down"))
    sleeps: list[float] = []
    assert call(fn, FAST, sleep=sleeps.append) == "ok"
    assert len(calls) == 3
    assert len(sleeps) == 2


def test_call_gives_up_after_max_attempts() -> None:
    calls, fn = failing(99, FakeSyncError(grpc.StatusCode.UNAVAILABLE, "down"))
    with pytest.raises(errors.UnavailableError, match="down"):
        call(fn, FAST, sleep=lambda _: None)
    assert len(calls) == 5


def test_call_does_not_retry_permanent_errors() -> None:
    calls, fn = failing(1, FakeSyncError(grpc.StatusCode.INVALID_ARGUMENT, "bad", "UNKNOWN_KIND"))
    with pytest.raises(errors.InvalidArgumentError) as info:
        call(fn, FAST, sleep=lambda _: None)
    assert info.value.code == "UNKNOWN_KIND"
    assert len(calls) == 1


def test_no_retry_policy() -> None:
    calls, fn = failing(1, FakeSyncError(grpc.StatusCode.UNAVAILABLE, "down"))
    with pytest.raises(errors.UnavailableError):
        call(fn, NO_RETRY, sleep=lambda _: None)
    assert len(calls) == 1


def test_deadline_retried_only_when_idempotent() -> None:
    calls, fn = failing(1, FakeSyncError(grpc.StatusCode.DEADLINE_EXCEEDED, "slow"))
    with pytest.raises(errors.DeadlineExceededError):
        call(fn, FAST, idempotent=False, sleep=lambda _: None)
    assert len(calls) == 1


async def test_acall_retries_unavailable() -> None:
    attempts = 0

    async def fn() -> int:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise aio_error(grpc.StatusCode.UNAVAILABLE, "restarting", "")
        return 7

    async def no_sleep(_: float) -> None:
        return None

    assert await acall(fn, FAST, sleep=no_sleep) == 7
    assert attempts == 2


def test_backoff_grows_and_is_bounded() -> None:
    policy = RetryPolicy(initial_backoff=1.0, max_backoff=4.0)
    for failures, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (10, 4.0)]:
        delay = policy.backoff(failures)
        assert ceiling / 2 <= delay <= ceiling
