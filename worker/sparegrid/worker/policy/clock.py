"""The policy's clock: monotonic time for hysteresis, local wall time for time windows."""

import asyncio
import time
from datetime import datetime, timedelta
from typing import Protocol


class PolicyClock(Protocol):
    def monotonic(self) -> float: ...

    def now(self) -> datetime:
        """Local wall-clock time, naive (time windows are in the volunteer's local time)."""
        ...

    async def sleep(self, seconds: float) -> None: ...


class SystemPolicyClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def now(self) -> datetime:
        return datetime.now()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class FakeClock:
    """A clock that moves only when told: `advance(seconds)`. `sleep` advances it too and
    yields to the event loop once, so a polling loop under test never waits."""

    def __init__(self, start: datetime | None = None) -> None:
        self._mono = 1000.0
        self._wall = start or datetime(2026, 11, 30, 12, 0, 0)  # a Monday

    def monotonic(self) -> float:
        return self._mono

    def now(self) -> datetime:
        return self._wall

    def advance(self, seconds: float) -> None:
        self._mono += seconds
        self._wall += timedelta(seconds=seconds)

    def set_wall(self, wall: datetime) -> None:
        self._wall = wall

    async def sleep(self, seconds: float) -> None:
        self.advance(seconds)
        await asyncio.sleep(0)
