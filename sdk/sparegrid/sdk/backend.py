"""The few primitives that differ between the asyncio and the sync SDK, each as a twin.

The asyncio code under `_async/` is the one source; `scripts/unasync` writes the sync code
under `_sync/` from it by renaming each `a`-prefixed or `Async`-prefixed name here to its
twin and dropping `async`/`await`. So `await aoffload(fn, x)` (a blocking call run in a
thread, off the event loop) becomes `offload(fn, x)` (a plain call).
"""

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, ParamSpec, TypeAlias, TypeVar

import grpc
from grpc import aio

from sparegrid.sdk.config import Connection

if TYPE_CHECKING:
    AsyncUnary: TypeAlias = aio.UnaryUnaryMultiCallable
    Unary: TypeAlias = grpc.UnaryUnaryMultiCallable

T = TypeVar("T")
P = ParamSpec("P")

AsyncHookResult: TypeAlias = Awaitable[None] | None
"""What a progress callback of the asyncio SDK may return: it may be a coroutine function."""
HookResult: TypeAlias = None


async def aoffload(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Runs blocking work (file I/O, hashing, tensor work) in a thread."""
    return await asyncio.to_thread(fn, *args, **kwargs)


def offload(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    return fn(*args, **kwargs)


async def asleep(seconds: float) -> None:
    await asyncio.sleep(seconds)


def sleep(seconds: float) -> None:
    time.sleep(seconds)


async def acallback(fn: Callable[[T], AsyncHookResult], arg: T) -> None:
    """Calls a progress callback, awaiting it when it is a coroutine function."""
    outcome = fn(arg)
    if inspect.isawaitable(outcome):
        await outcome


def callback(fn: Callable[[T], HookResult], arg: T) -> None:
    fn(arg)


class AsyncChannelRef:
    """A grpc.aio channel opened on first use, so it belongs to the event loop using it."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self._channel: aio.Channel | None = None

    @property
    def channel(self) -> aio.Channel:
        if self._channel is None:
            self._channel = self._connection.aio_channel()
        return self._channel

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()


class ChannelRef:
    """A sync channel, opened at once (a bad TLS CA file is reported by the constructor)."""

    def __init__(self, connection: Connection) -> None:
        self.channel: grpc.Channel = connection.channel()

    def close(self) -> None:
        self.channel.close()
