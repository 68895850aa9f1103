"""Typed errors of the SDK, and the one place that turns a gRPC error into one.

Every error carries a stable `code` (the coordinator's `sparegrid-code` trailing metadata,
e.g. `JOB_NOT_FOUND`, or the status name when the server sent none), a human `message`
and the gRPC `status`.
"""

from collections.abc import Iterable
from typing import Any, cast

import grpc

from sparegrid.wire import codes
from sparegrid.wire.metadata import retry_after_seconds

CODE_METADATA_KEY = codes.CODE_METADATA_KEY


class SparegridError(Exception):
    """Root of every error the SDK raises."""

    # seconds the coordinator asked the caller to wait before trying again, if it did
    retry_after: float | None = None

    def __init__(
        self, code: str, message: str, status: grpc.StatusCode = grpc.StatusCode.UNKNOWN
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, message={self.message!r})"


class AuthenticationError(SparegridError):
    """No API key, or one the coordinator does not know (UNAUTHENTICATED)."""


class PermissionDeniedError(SparegridError):
    """The key is valid but may not do this, e.g. an admin call (PERMISSION_DENIED)."""


class NotFoundError(SparegridError):
    """No such job, blob or account (NOT_FOUND)."""


class AlreadyExistsError(SparegridError):
    """E.g. an account name that is taken (ALREADY_EXISTS)."""


class InvalidArgumentError(SparegridError):
    """A bad request: unknown job kind, bad params (INVALID_ARGUMENT)."""


class FailedPreconditionError(SparegridError):
    """The request is valid but the state forbids it, e.g. too little credit."""


class ResourceExhaustedError(SparegridError):
    """A limit was hit: rate limit, blob too large (RESOURCE_EXHAUSTED)."""


class UnavailableError(SparegridError):
    """The coordinator cannot be reached or is shutting down (UNAVAILABLE)."""


class DeadlineExceededError(SparegridError, TimeoutError):
    """A call or a wait ran out of time (DEADLINE_EXCEEDED)."""


class AbortedError(SparegridError):
    """A conflict, e.g. a concurrent change (ABORTED)."""


class CancelledError(SparegridError):
    """The call was cancelled (CANCELLED)."""


class InternalError(SparegridError):
    """A bug in the coordinator; the message carries a reference id from its log."""


class UnimplementedError(SparegridError):
    """The coordinator does not offer this RPC (UNIMPLEMENTED): versions differ."""


class VerificationError(SparegridError):
    """A receipt, signature, output digest or downloaded blob did not check out."""

    def __init__(self, message: str, code: str = "VERIFICATION_FAILED") -> None:
        super().__init__(code, message, grpc.StatusCode.DATA_LOSS)


class JobFailedError(SparegridError):
    """A job, or one of its tasks, ended without a result; what there is stays fetchable."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(code, message, grpc.StatusCode.ABORTED)


_BY_STATUS: dict[grpc.StatusCode, type[SparegridError]] = {
    grpc.StatusCode.UNAUTHENTICATED: AuthenticationError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExistsError,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.ABORTED: AbortedError,
    grpc.StatusCode.CANCELLED: CancelledError,
    grpc.StatusCode.INTERNAL: InternalError,
    grpc.StatusCode.UNIMPLEMENTED: UnimplementedError,
}


def error_class(status: grpc.StatusCode) -> type[SparegridError]:
    """The SDK error class for a gRPC status (SparegridError for the rest)."""
    return _BY_STATUS.get(status, SparegridError)


def _code_from_metadata(metadata: Iterable[Any] | None) -> str | None:
    for key, value in metadata or ():
        if key == CODE_METADATA_KEY:
            return value.decode() if isinstance(value, bytes) else str(value)
    return None


def from_rpc_error(exc: grpc.RpcError) -> SparegridError:
    """The typed SDK error for a failed call (sync or grpc.aio)."""
    if not callable(getattr(exc, "code", None)):
        return SparegridError(codes.ErrorCode.UNKNOWN, str(exc) or type(exc).__name__)
    status = exc.code()
    message = exc.details() or status.name.lower().replace("_", " ")
    code = _code_from_metadata(exc.trailing_metadata()) or status.name
    if status == grpc.StatusCode.UNAVAILABLE and message.startswith(_NO_CONNECTION):
        message = f"{UNREACHABLE}: {message}"  # gRPC's words alone say nothing of what to do
    err = error_class(status)(code, message, status)
    err.retry_after = retry_after_seconds(cast(Any, exc.trailing_metadata()))
    return err


_NO_CONNECTION = ("failed to connect to all addresses", "DNS resolution failed")
UNREACHABLE = "cannot reach the coordinator (is it running, and is its address right?)"
