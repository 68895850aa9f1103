"""Results a node's record lets through unchecked wait until a later check vouches for them.

The adaptive policy checks a trusted node's results at its check rate (5% at the floor).
Accepted at once, an unchecked result of a node that turned to cheating would stand: a
node trusted for months could slip about 1/rate wrong answers through before its first
check. So such a result is *held*: out of the queue, not yet accepted, not yet paid. Every
so often (at the node's check rate, per result it returns) one of the node's held results,
picked at random after the fact, goes to a node of another vetted owner to be checked.
When that check confirms it, every result the node had held at the pick is accepted; when
it fails, all of them are thrown away and run again elsewhere. A node cannot tell which
result will be checked, so a node that cheats on everything from some day on has nothing
accepted past its first check.

A held result waits at most `wait_seconds` (or until its job has nothing else left to run)
before a check is picked for its node, so a client never waits long for it. A check that
ends without an answer (its job ended: cancelled, failed) leaves the results it would have
vouched for waiting for another check of their node; the held results of a job that ended
are forgotten. After a restart, held results are queued for an ordinary check.
"""

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from sparegrid.coordinator.clock import Clock
from sparegrid.coordinator.domain import Task
from sparegrid.coordinator.services.verification import Decision


@dataclass
class VouchConfig:
    # the longest a held result waits before a check of its node is picked
    wait_seconds: float = 30.0


@dataclass
class Held:
    """A result accepted on its node's record, waiting for a check of that node."""

    job_id: str
    task: Task
    decision: Decision  # applied once vouched for
    since: float


@dataclass
class Pick:
    """A held result sent to be checked, and the others of its node it vouches for."""

    node_id: str
    vouched: list[Held] = field(default_factory=list)
    job_id: str = ""  # the job of the result being checked


class Vouching:
    def __init__(
        self,
        clock: Clock,
        config: VouchConfig,
        check_rate: Callable[[str], float],
        rng: random.Random | None = None,
    ) -> None:
        self._clock = clock
        self.config = config
        self._check_rate = check_rate
        self.rng = rng or random.Random()
        self.held: dict[str, list[Held]] = {}  # node id -> its held results, oldest first
        self.picks: dict[str, Pick] = {}  # task id of a held result being checked -> pick

    def hold(self, node_id: str, held: Held) -> Held | None:
        """Holds a result; returns one of the node's held results to check now, or None."""
        self.held.setdefault(node_id, []).append(held)
        if self.rng.random() < self._check_rate(node_id):
            return self.pick(node_id)
        return None

    def pick(self, node_id: str, job_id: str = "") -> Held | None:
        """One of the node's held results (of that job, if given), at random, to check; the
        node's other held results wait for its answer."""
        mine = self.held.pop(node_id, [])
        among = [h for h in mine if not job_id or h.job_id == job_id]
        if not among:
            if mine:
                self.held[node_id] = mine
            return None
        chosen = self.rng.choice(among)
        rest = [h for h in mine if h is not chosen]
        self.picks[chosen.task.id] = Pick(node_id, rest, chosen.job_id)
        return chosen

    def unpick(self, task_id: str) -> None:
        """A pick that will give no answer: the results it vouched for wait for another."""
        pick = self.picks.pop(task_id, None)
        if pick is not None and pick.vouched:
            mine = self.held.get(pick.node_id, []) + pick.vouched
            self.held[pick.node_id] = sorted(mine, key=lambda h: h.since)

    def ended(self, job_id: str) -> None:
        """A job ended: its held results are forgotten, and a check among its tasks will
        give no answer."""
        self._drop(lambda h: h.job_id == job_id)
        for task_id in [t for t, p in self.picks.items() if p.job_id == job_id]:
            self.unpick(task_id)

    def forget(self, task_id: str) -> None:
        """A held result's task was decided otherwise (a late result of another node was
        compared with it): no check is to vouch for it any more."""
        self._drop(lambda h: h.task.id == task_id)

    def _drop(self, gone: Callable[[Held], bool]) -> None:
        """Forgets the held results `gone` picks, waiting or vouched for by a pick."""
        for node_id in list(self.held):
            kept = [h for h in self.held[node_id] if not gone(h)]
            if kept:
                self.held[node_id] = kept
            else:
                del self.held[node_id]
        for pick in self.picks.values():
            pick.vouched = [h for h in pick.vouched if not gone(h)]

    def checked(self, task_id: str) -> Pick | None:
        """The pick a task's check decided, if the task was one."""
        return self.picks.pop(task_id, None)

    def discard(self, node_id: str) -> list[Held]:
        """Everything the node holds, its picks' vouched results too: it was caught."""
        dropped = self.held.pop(node_id, [])
        for task_id in [t for t, p in self.picks.items() if p.node_id == node_id]:
            dropped += self.picks[task_id].vouched
            self.picks[task_id].vouched = []
        return dropped

    def overdue(self) -> list[str]:
        """Nodes whose oldest held result has waited too long for a check."""
        limit = self._clock.now() - self.config.wait_seconds
        return [n for n, held in self.held.items() if held and held[0].since <= limit]

    def nodes_of(self, job_id: str) -> list[str]:
        return [n for n, held in self.held.items() if any(h.job_id == job_id for h in held)]

    def count(self, job_id: str) -> int:
        return sum(1 for held in self.held.values() for h in held if h.job_id == job_id) + sum(
            1 for p in self.picks.values() for h in p.vouched if h.job_id == job_id
        )
