"""How often one account may call the coordinator's unary client methods.

Every call is served on the coordinator's one event loop, which also settles the workers'
results: without a bound, one API key looping GetJob, ListJobs or GetJobResults (a page of
1,000) takes that loop from every other client and from the workers. A token bucket per
account: `burst` tokens at once, refilled at `rate` a second. A call costs one token, a
page more (`page_cost`): what it may carry, a token per hundred items. A call that finds
too few is refused (RESOURCE_EXHAUSTED, TOO_MANY_CALLS) with the time after which its
tokens are there, which the SDK waits before trying again: a program's burst slows down
to the rate rather than failing. Admins are not counted.

An honest client comes nowhere near it: `job wait` and `job watch` follow a job over one
WatchJob stream (capped on its own), the dashboard reads the store in-process, and a
program polling GetJob once a second uses 1 of the 50 tokens a second that come back.

Buckets are kept for the accounts that called recently: past `max_accounts`, those full
again are forgotten (a full bucket is what a new one is), then the least recently used
down to nine tenths of it, so that the next trim is many calls away.
"""

from dataclasses import dataclass

from sparegrid.coordinator.clock import Clock
from sparegrid.coordinator.domain import Account
from sparegrid.coordinator.errors import CoordinatorError, ErrorKind

CALL_BURST_SECONDS = 10  # the burst is this many seconds of the rate


@dataclass
class CallConfig:
    rate: float = 50.0  # tokens a second per account (0: no limit)
    burst: int = int(50 * CALL_BURST_SECONDS)  # tokens one account may spend at once
    max_accounts: int = 10_000  # buckets kept (full ones are forgotten first)


def page_cost(items: int) -> int:
    """The tokens a call returning up to `items` items (jobs, results) costs."""
    return 1 + max(0, items) // 100


class CallLimiter:
    def __init__(self, clock: Clock, config: CallConfig) -> None:
        self.clock = clock
        self.config = config
        self._buckets: dict[str, tuple[float, float]] = {}  # account id -> tokens, updated
        self.refused = 0  # a metric

    def _tokens(self, account_id: str, now: float) -> float:
        cfg = self.config
        tokens, updated = self._buckets.get(account_id, (float(cfg.burst), now))
        return min(float(cfg.burst), tokens + (now - updated) * cfg.rate)

    def admit(self, account: Account, cost: int = 1) -> None:
        """Takes `cost` tokens from the account's bucket; refuses the call when it has
        fewer (TOO_MANY_CALLS, with the seconds until it has them)."""
        cfg = self.config
        if cfg.rate <= 0 or account.is_admin:
            return
        cost = min(cost, cfg.burst)  # a call dearer than the burst is still possible
        now = self.clock.now()
        tokens = self._tokens(account.id, now)
        if tokens < cost:
            self.refused += 1
            wait = (cost - tokens) / cfg.rate
            raise CoordinatorError(
                ErrorKind.EXHAUSTED,
                "TOO_MANY_CALLS",
                f"account {account.name!r} is calling faster than the {cfg.rate:g} calls a "
                f"second (after {cfg.burst} at once) one account may make; try again in "
                f"{wait:.2f} s (the SDK waits by itself)",
                retry_after=wait,
            )
        self._buckets.pop(account.id, None)  # the most recent last, for the trim below
        self._buckets[account.id] = (tokens - cost, now)
        if len(self._buckets) > cfg.max_accounts:
            self._trim(now)

    def _trim(self, now: float) -> None:
        full = float(self.config.burst)
        for key in [k for k in self._buckets if self._tokens(k, now) >= full]:
            del self._buckets[key]
        keep = self.config.max_accounts * 9 // 10  # room for more before the next trim
        while len(self._buckets) > keep:  # the least recent go
            del self._buckets[next(iter(self._buckets))]
