"""Admits worker registrations at a bounded rate, so that a storm of reconnecting workers
(a coordinator restart, a network coming back) queues outside instead of inside.

A token bucket: `rate` registrations a second, `burst` at once. A registration refused
gets the time after which it would find a token, counting every refusal before it as a
place taken in line, so that refused workers come back spread out at the rate they can be
admitted rather than all at once again. Refusals are logged, at most one line per
`log_every` seconds.
"""

import logging
from dataclasses import dataclass

from sparegrid.coordinator.clock import Clock

log = logging.getLogger("sparegrid.coordinator.admission")


@dataclass
class AdmissionConfig:
    rate: float = 400.0  # registrations admitted per second (0: no limit)
    burst: int = 400  # admitted at once before the rate applies
    log_every: float = 5.0  # seconds between two log lines about refusals
    min_wait: float = 0.5  # the shortest retry hint: sooner only makes more refusals


class Admission:
    def __init__(self, clock: Clock, config: AdmissionConfig) -> None:
        self.clock = clock
        self.config = config
        self._tokens = float(config.burst)
        self._updated = clock.now()
        self._line_until = self._updated  # the last place promised to a refused one
        self.admitted = 0
        self.refused = 0  # in all (a metric)
        self._unlogged = 0
        self._logged_at = float("-inf")

    def admit(self) -> float:
        """0 when a registration may go ahead now; else the seconds after which to retry."""
        cfg = self.config
        if cfg.rate <= 0:
            self.admitted += 1
            return 0.0
        now = self.clock.now()
        self._tokens = min(float(cfg.burst), self._tokens + (now - self._updated) * cfg.rate)
        self._updated = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            self.admitted += 1
            return 0.0
        self._line_until = max(self._line_until, now) + 1.0 / cfg.rate
        self.refused += 1
        self._unlogged += 1
        wait = max(self._line_until - now, cfg.min_wait)
        if now - self._logged_at >= cfg.log_every:
            log.warning(
                "registration storm: refused %d registration(s) since the last note "
                "(admitting %g a second, %d at once); the latest was told to retry in %.1f s",
                self._unlogged,
                cfg.rate,
                cfg.burst,
                wait,
            )
            self._logged_at, self._unlogged = now, 0
        return wait
