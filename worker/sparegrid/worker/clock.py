"""Time as the worker sees it: injectable, so policies are testable without waiting."""

import asyncio
import random
import time
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The real clock: `time.monotonic` and `asyncio.sleep`."""

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class Backoff:
    """Jittered exponential backoff: initial, doubling up to `cap`, each delay in [d/2, d]."""

    def __init__(self, initial: float, cap: float, rng: random.Random | None = None) -> None:
        self._initial = initial
        self._cap = max(cap, initial)
        self._rng = rng or random.Random()
        self._failures = 0

    def reset(self) -> None:
        self._failures = 0

    def next_delay(self) -> float:
        ceiling = min(self._cap, self._initial * 2.0 ** min(self._failures, 62))
        self._failures += 1
        return ceiling * (0.5 + self._rng.random() / 2)
