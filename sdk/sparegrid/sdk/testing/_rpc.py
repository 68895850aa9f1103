"""Servicer plumbing shared by the fakes: aborting with a sparegrid-code."""

import functools
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from grpc import aio

from sparegrid.sdk.errors import CODE_METADATA_KEY

Context = aio.ServicerContext[Any, Any]
S = TypeVar("S")
Req = TypeVar("Req")
Resp = TypeVar("Resp")


class Abort(Exception):
    """Raised inside a fake servicer: ends the call with this status and code."""

    def __init__(self, status: grpc.StatusCode, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


async def abort(context: Context, err: Abort) -> None:
    context.set_trailing_metadata(((CODE_METADATA_KEY, err.code),))
    await context.abort(err.status, err.message)


def aborts(
    method: Callable[[S, Req, Context], Awaitable[Resp]],
) -> Callable[[S, Req, Context], Awaitable[Resp]]:
    """Turns an `Abort` raised by a unary handler into the call's status."""

    @functools.wraps(method)
    async def handler(self: S, request: Req, context: Context) -> Resp:
        try:
            return await method(self, request, context)
        except Abort as err:
            await abort(context, err)
            raise

    return handler
