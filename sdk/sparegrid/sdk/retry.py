"""Which failures are retried, and the jittered exponential backoff between tries.

Only transient failures are retried: UNAVAILABLE, and DEADLINE_EXCEEDED on idempotent
calls. RESOURCE_EXHAUSTED is a limit (a quota, a blob too large) that waiting does not lift,
but for TOO_MANY_TRANSFERS: the account's other uploads and downloads open at once, one of
which ends soon (a program running many under one key waits for a place). And for
TOO_MANY_CALLS: the account called faster than the coordinator serves one account, which
refused the call before doing anything and said when its turn comes (`retry-after-ms`).
The call waits that long (and a little more, at random, so that calls told the same time
come back apart), for up to MAX_THROTTLED_WAIT seconds in all, without counting a
failure: a program's burst of calls slows down to the account's rate instead of failing.
"""

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import grpc

from sparegrid.sdk.errors import SparegridError, from_rpc_error

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 5
    initial_backoff: float = 0.2
    max_backoff: float = 5.0
    multiplier: float = 2.0

    def backoff(self, failures: int) -> float:
        """Delay after the `failures`-th consecutive failure (1-based), half of it jitter."""
        ceiling = min(self.max_backoff, self.initial_backoff * self.multiplier ** (failures - 1))
        return ceiling / 2 + random.uniform(0, ceiling / 2)


NO_RETRY = RetryPolicy(max_attempts=1)
# the longest one call waits, in all, for turns its account was refused (TOO_MANY_CALLS)
MAX_THROTTLED_WAIT = 120.0
# A watch outlives blips and coordinator restarts: about half a minute of reconnecting.
WATCH_RECONNECT = RetryPolicy(max_attempts=12, initial_backoff=0.2, max_backoff=5.0)


def is_transient(err: SparegridError, idempotent: bool) -> bool:
    if err.status == grpc.StatusCode.UNAVAILABLE or err.code == "TOO_MANY_TRANSFERS":
        return True
    return err.status == grpc.StatusCode.DEADLINE_EXCEEDED and idempotent


class Attempts:
    """Counts consecutive failures of one operation; says how long to wait or gives up."""

    def __init__(self, policy: RetryPolicy, idempotent: bool = True) -> None:
        self.policy = policy
        self.idempotent = idempotent
        self.failures = 0
        self.throttled = 0.0  # seconds waited for the account's turn (TOO_MANY_CALLS)

    def succeeded(self) -> None:
        self.failures = 0
        self.throttled = 0.0

    def failed(self, err: SparegridError) -> float:
        """The delay before the next try; raises `err` when it is not to be retried."""
        if err.code == "TOO_MANY_CALLS" and self.policy.max_attempts > 1:
            wait = (err.retry_after or self.policy.initial_backoff) * random.uniform(1.0, 1.5)
            if self.throttled + wait <= MAX_THROTTLED_WAIT:
                self.throttled += wait
                return wait
        self.failures += 1
        if self.failures >= self.policy.max_attempts or not is_transient(err, self.idempotent):
            raise err
        return self.policy.backoff(self.failures)


def call(
    fn: Callable[[], T],
    policy: RetryPolicy,
    *,
    idempotent: bool = True,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Runs a unary call, retrying transient failures; raises a SparegridError."""
    attempts = Attempts(policy, idempotent)
    while True:
        try:
            return fn()
        except grpc.RpcError as exc:
            err = from_rpc_error(exc)
        sleep(attempts.failed(err))


async def acall(
    fn: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    *,
    idempotent: bool = True,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> T:
    """Like `call`, for grpc.aio."""
    attempts = Attempts(policy, idempotent)
    while True:
        try:
            return await fn()
        except grpc.RpcError as exc:
            err = from_rpc_error(exc)
        await sleep(attempts.failed(err))
