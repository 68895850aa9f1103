"""Admits worker registrations at a bounded rate, so that a storm of reconnecting workers
(a coordinator restart, a network coming back) is spread out instead of landing at once.

A token bucket: `rate` registrations a second, `burst` at once. A registration that finds
no token but would get one within `hold` seconds is admitted with that wait: it keeps its
stream and goes ahead when its turn comes, which costs the coordinator a timer. One that
would wait longer is refused with the time after which its turn would fall within `hold`,
counting every refusal before it as a place taken in line, so that refused workers come
back spread out at the rate they can be admitted rather than all at once again. A refusal
costs more than a wait (the worker dials again: a new connection and a new Hello), so the
line held inside is what keeps a storm cheap; `hold` stays well under the worker's 30 s
handshake timeout. Waits end on a `tick` of the clock (0.1 s), so that the registrations
whose turns fall in one tick go ahead together and are attached in one group commit, not
one commit (and one fsync) each. Refusals are logged, at most one line per `log_every`
seconds.
"""

import logging
import math
from dataclasses import dataclass
from typing import NamedTuple

from sparegrid.coordinator.clock import Clock

log = logging.getLogger("sparegrid.coordinator.admission")


@dataclass
class AdmissionConfig:
    rate: float = 500.0  # registrations admitted per second (0: no limit)
    burst: int = 500  # admitted at once before the rate applies
    hold: float = 10.0  # the longest wait for a turn that is admitted rather than refused
    tick: float = 0.1  # waits end on a multiple of this: those admitted together go together
    log_every: float = 5.0  # seconds between two log lines about refusals
    min_wait: float = 0.5  # the shortest retry hint: sooner only makes more refusals


class Decision(NamedTuple):
    """Admitted: go ahead after `wait` seconds (0: now). Refused: retry after `wait`."""

    admitted: bool
    wait: float


class Admission:
    def __init__(self, clock: Clock, config: AdmissionConfig) -> None:
        self.clock = clock
        self.config = config
        self._tokens = float(config.burst)  # below 0: turns promised to those waiting
        self._updated = clock.now()
        self._line_until = self._updated  # the last place promised to a refused one
        self.admitted = 0
        self.waited = 0  # admitted after a wait for their turn (a metric)
        self.refused = 0  # in all (a metric)
        self._unlogged = 0
        self._logged_at = float("-inf")

    def admit(self) -> Decision:
        """Whether a registration may go ahead, and after how long (see Decision)."""
        cfg = self.config
        if cfg.rate <= 0:
            self.admitted += 1
            return Decision(True, 0.0)
        now = self.clock.now()
        self._tokens = min(float(cfg.burst), self._tokens + (now - self._updated) * cfg.rate)
        self._updated = now
        turn = max(0.0, (1.0 - self._tokens) / cfg.rate)  # until its token is there
        if turn <= cfg.hold + 1e-6:  # one told to come back at its turn finds it
            self._tokens -= 1.0
            self.admitted += 1
            self.waited += turn > 0
            if turn > 0 and cfg.tick > 0:
                turn = math.ceil((now + turn) / cfg.tick) * cfg.tick - now
            return Decision(True, turn)
        # back when its turn would fall within the hold, after those refused before it
        self._line_until = max(self._line_until + 1.0 / cfg.rate, now + turn - cfg.hold)
        wait = max(self._line_until - now, cfg.min_wait)
        self._refused(now, wait)
        return Decision(False, wait)

    def _refused(self, now: float, wait: float) -> None:
        cfg = self.config
        self.refused += 1
        self._unlogged += 1
        if now - self._logged_at >= cfg.log_every:
            log.warning(
                "registration storm: refused %d registration(s) since the last note "
                "(admitting %g a second, %d at once, a line of %g s); the latest was told to "
                "retry in %.1f s",
                self._unlogged,
                cfg.rate,
                cfg.burst,
                cfg.hold,
                wait,
            )
            self._logged_at, self._unlogged = now, 0
