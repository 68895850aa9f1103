"""A token bucket for the volunteer's upload and download limits (bytes per second)."""

from sparegrid.wire.clock import Clock


class RateLimiter:
    """`await take(n)` returns once `n` more bytes fit under `rate` bytes per second; a
    burst of up to one second's worth passes at once."""

    def __init__(self, rate: int, clock: Clock) -> None:
        self.rate = rate
        self._clock = clock
        self._tokens = float(rate)
        self._last = clock.monotonic()

    def _refill(self) -> None:
        now = self._clock.monotonic()
        self._tokens = min(self._tokens + (now - self._last) * self.rate, float(self.rate))
        self._last = now

    async def take(self, count: int) -> None:
        self._refill()
        self._tokens -= count
        if self._tokens < 0:
            await self._clock.sleep(-self._tokens / self.rate)


async def throttle(limiter: "RateLimiter | None", count: int) -> None:
    if limiter is not None:
        await limiter.take(count)
