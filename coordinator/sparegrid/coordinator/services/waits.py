"""Jobs that no connected node can run fail after a while, saying why.

A job waits when none of its tasks runs and `Scheduler.waiting` has a reason: no worker
is connected, no node meets its requirements, too few owners for its quorum, its devices
are paused, or results wait for a check or a decision no connected node can give. It
fails once it has waited so for the wait limit without a break, with that reason as its
error; its client gets the rest of its escrow back and may `job retry --failed` it.
"""

import logging

from sparegrid.coordinator.clock import Clock
from sparegrid.coordinator.domain import JobState
from sparegrid.coordinator.services.scheduler import Scheduler

log = logging.getLogger("sparegrid.coordinator.waits")

CHECK_EVERY = 10.0  # seconds between checks at most (a quarter of a short limit)


def duration(seconds: float) -> str:
    """24h, 90m, 45s: how a wait limit reads in an error."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


class WaitLimit:
    def __init__(self, scheduler: Scheduler, clock: Clock, limit: float) -> None:
        self.scheduler = scheduler
        self.clock = clock
        self.limit = limit  # seconds; 0: jobs wait for ever
        self.since: dict[str, float] = {}  # job id -> when it began to wait, this time
        self._next = 0.0

    def check(self) -> list[str]:
        """Fails the jobs that have waited for the limit; returns their ids."""
        now = self.clock.now()
        if self.limit <= 0 or now < self._next:
            return []
        self._next = now + min(CHECK_EVERY, self.limit / 4)
        failed: list[str] = []
        for job_id, active in list(self.scheduler.jobs.items()):
            reason = "" if active.running else self.scheduler.waiting(active)
            if not reason:
                self.since.pop(job_id, None)
                continue
            began = self.since.setdefault(job_id, now)
            if now - began >= self.limit:
                error = f"waited {duration(self.limit)} (the coordinator's wait limit): {reason}"
                log.info("job %s fails: %s", job_id, error)
                self.scheduler.finish(active, JobState.FAILED, error)
                failed.append(job_id)
        for job_id in [j for j in self.since if j not in self.scheduler.jobs]:
            del self.since[job_id]
        return failed
