"""Time, one protocol for the whole project: injectable, so leases, expiry, backoff and the
worker's policies are testable on virtual time instead of real sleeps.

`now()` is wall time in seconds since the epoch (what the coordinator stores); `local_time`
turns it into the naive local datetime the worker's time windows are written in.
`monotonic()` measures intervals. `FakeClock` moves only when told (or when something
sleeps on it), and both its readings move together.
"""

import asyncio
import time
from datetime import datetime
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float: ...

    def now(self) -> float:
        """Wall-clock time, seconds since the epoch."""
        ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The real clock: `time.monotonic`, `time.time` and `asyncio.sleep`."""

    def monotonic(self) -> float:
        return time.monotonic()

    def now(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class FakeClock:
    """A clock that moves only when told: `advance(seconds)`. `sleep` advances it too and
    yields to the event loop once, so a polling loop under test never waits. `start` is the
    wall time, as epoch seconds or a naive local datetime."""

    def __init__(self, start: float | datetime = 1_000_000.0) -> None:
        self._mono = 1000.0
        self._wall = _epoch(start)

    def monotonic(self) -> float:
        return self._mono

    def now(self) -> float:
        return self._wall

    def advance(self, seconds: float) -> None:
        self._mono += seconds
        self._wall += seconds

    def set_wall(self, wall: float | datetime) -> None:
        """Moves the wall clock alone (a clock change); monotonic time is untouched."""
        self._wall = _epoch(wall)

    async def sleep(self, seconds: float) -> None:
        self.advance(max(seconds, 0.0))
        await asyncio.sleep(0)


def local_time(clock: Clock) -> datetime:
    """The clock's wall time as a naive local datetime (the volunteer's time windows)."""
    return datetime.fromtimestamp(clock.now())


def _epoch(when: float | datetime) -> float:
    return when.timestamp() if isinstance(when, datetime) else float(when)
