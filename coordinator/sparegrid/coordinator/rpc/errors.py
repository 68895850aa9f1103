"""The one place where coordinator errors become gRPC statuses.

A CoordinatorError keeps its message and travels with its stable code in the trailing
metadata `sparegrid-code`; anything unexpected becomes INTERNAL with a reference id that
is also logged with the traceback.
"""

import functools
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import grpc
from grpc import aio

from sparegrid.coordinator.errors import CoordinatorError, ErrorKind, store_unavailable
from sparegrid.coordinator.store.base import StoreUnavailable
from sparegrid.wire.codes import CODE_METADATA_KEY, ErrorCode
from sparegrid.wire.metadata import RETRY_AFTER_KEY

log = logging.getLogger("sparegrid.coordinator.rpc")

CODE_KEY = CODE_METADATA_KEY
# A status message travels in a trailer, percent-encoded; a client drops trailers past 8 KiB
# (and the stable code with them), so a message that echoes what a caller sent is cut short.
MAX_MESSAGE_BYTES = 2000

STATUS = {
    ErrorKind.INVALID: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorKind.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ErrorKind.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    ErrorKind.PERMISSION: grpc.StatusCode.PERMISSION_DENIED,
    ErrorKind.PRECONDITION: grpc.StatusCode.FAILED_PRECONDITION,
    ErrorKind.EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorKind.EXISTS: grpc.StatusCode.ALREADY_EXISTS,
    ErrorKind.ABORTED: grpc.StatusCode.ABORTED,
    ErrorKind.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
}

S = TypeVar("S")
Req = TypeVar("Req")
Resp = TypeVar("Resp")


async def abort(context: aio.ServicerContext[Any, Any], exc: Exception) -> NoReturn:
    if isinstance(exc, StoreUnavailable):  # a read outside a group commit met it
        exc = store_unavailable(exc)
    if isinstance(exc, CoordinatorError):
        trailers = [(CODE_KEY, exc.code)]
        if exc.retry_after > 0:
            trailers.append((RETRY_AFTER_KEY, str(max(1, round(exc.retry_after * 1000)))))
        context.set_trailing_metadata(tuple(trailers))
        await context.abort(STATUS[exc.kind], shortened(exc.message))
    ref = uuid.uuid4().hex[:12]
    log.error("internal error, reference %s", ref, exc_info=exc)
    context.set_trailing_metadata(((CODE_KEY, ErrorCode.INTERNAL),))
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error (reference {ref})")


def shortened(message: str) -> str:
    """The message, cut to MAX_MESSAGE_BYTES of UTF-8 (each may take 3 bytes encoded)."""
    raw = message.encode()
    if len(raw) <= MAX_MESSAGE_BYTES:
        return message
    return raw[: MAX_MESSAGE_BYTES - 20].decode("utf-8", "ignore") + " ... (cut short)"


def unary(
    fn: Callable[[S, Req, aio.ServicerContext[Any, Any]], Awaitable[Resp]],
) -> Callable[[S, Req, aio.ServicerContext[Any, Any]], Awaitable[Resp]]:
    @functools.wraps(fn)
    async def wrapper(self: S, request: Req, context: aio.ServicerContext[Any, Any]) -> Resp:
        try:
            return await fn(self, request, context)
        except aio.AbortError:
            raise
        except Exception as exc:
            await abort(context, exc)

    return wrapper


def streaming(
    fn: Callable[[S, Req, aio.ServicerContext[Any, Any]], AsyncIterator[Resp]],
) -> Callable[[S, Req, aio.ServicerContext[Any, Any]], AsyncIterator[Resp]]:
    @functools.wraps(fn)
    async def wrapper(
        self: S, request: Req, context: aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Resp]:
        try:
            async for item in fn(self, request, context):
                yield item
        except aio.AbortError:
            raise
        except Exception as exc:
            await abort(context, exc)

    return wrapper
