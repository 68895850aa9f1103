"""Applies verification decisions: results held, tasks accepted or failed, nodes paid,
reputations moved and receipts countersigned, all in the caller's transaction.

Intake hands over each result that passed its checks (signature, lease, inputs, output
digests); what happens next depends on the job's verification policy (verification.py).
"""

import functools
import logging
from dataclasses import dataclass, field

from sparegrid.coordinator.domain import (
    Attempt,
    AttemptState,
    FileRef,
    Replica,
    ReplicaState,
    Task,
    TaskState,
)
from sparegrid.coordinator.services.canaries import Canaries
from sparegrid.coordinator.services.comparators import Reader
from sparegrid.coordinator.services.ledger import Payment
from sparegrid.coordinator.services.scheduler import ActiveJob, Scheduler
from sparegrid.coordinator.services.spotcheck import work_of
from sparegrid.coordinator.services.verification import Decision, Outcome, Verifier
from sparegrid.coordinator.states import move_attempt, move_task
from sparegrid.v1 import common_pb2
from sparegrid.wire import Signer
from sparegrid.wire.receipt import countersign

log = logging.getLogger("sparegrid.coordinator.settlement")

# methods under which agreement with another owner was actually seen
_COMPARED = {
    common_pb2.VALIDATION_METHOD_QUORUM,
    common_pb2.VALIDATION_METHOD_CROSS_CHECKED,
    common_pb2.VALIDATION_METHOD_KNOWN_ANSWER,
    common_pb2.VALIDATION_METHOD_SPOT_CHECKED,
}


@dataclass
class Candidate:
    attempt: Attempt
    task: Task
    outputs: list[FileRef]
    receipt: bytes  # the worker's receipt


@dataclass
class Settled:
    """What a batch changed, for the scheduler to act on after the commit."""

    released: list[Attempt] = field(default_factory=list)
    superseded: list[Attempt] = field(default_factory=list)
    finished: list[ActiveJob] = field(default_factory=list)
    failed: list[tuple[ActiveJob, str]] = field(default_factory=list)
    jobs: set[str] = field(default_factory=set)
    paid: dict[str, int] = field(default_factory=dict)  # attempt -> credit paid now


class Settlement:
    def __init__(
        self, scheduler: Scheduler, verifier: Verifier, signer: Signer, canaries: Canaries
    ) -> None:
        self._batch: dict[str, Attempt] = {}
        self.canaries = canaries
        self.scheduler = scheduler
        self.store = scheduler.store
        self.verifier = verifier
        self.signer = signer

    def settle(
        self, node_id: str, owner: str, candidates: list[Candidate], read: Reader
    ) -> Settled:
        """Records each candidate as a held result and applies its task's decision."""
        sched, store = self.scheduler, self.store
        now = sched.clock.now()
        out = Settled()
        touched: dict[str, Task] = {}
        attempts: list[Attempt] = []
        self._batch = {c.attempt.id: c.attempt for c in candidates}
        for c in candidates:
            active = sched.jobs[c.task.job_id]
            move_attempt(c.attempt, AttemptState.SUCCEEDED)
            c.attempt.finished_at = now
            attempts.append(c.attempt)
            out.released.append(c.attempt)
            replica = Replica(
                c.attempt.id, c.task.id, c.task.job_id, node_id, owner, c.outputs, c.receipt,
                created_at=now, params=c.attempt.params,
            )  # fmt: skip
            store.add_replicas([replica])
            sched.hold_replica(active, replica)
            results = active.replicas.get(c.task.id, [])
            excluded = active.excluded.get(c.task.id, set())
            known = self.canaries.known.get(c.task.id)
            decision = self.verifier.decide(
                active.job, c.task, results, read,
                functools.partial(sched.others_online, active, excluded), known,
            )  # fmt: skip
            touched[c.task.id] = c.task
            out.jobs.add(active.job.id)
            self._apply(active, c, decision, out)
        store.update_attempts(attempts + out.superseded)
        store.update_tasks(list(touched.values()))
        store.add_node_counts(node_id, len(candidates), 0)
        for job_id in out.jobs:
            store.update_job(sched.jobs[job_id].job)
        return out

    def _apply(self, active: ActiveJob, c: Candidate, decision: Decision, out: Settled) -> None:
        task = c.task
        if decision.outcome == Outcome.PENDING:
            if task.state == TaskState.LEASED and _running_is(active, task, c.attempt):
                move_task(task, TaskState.QUEUED)
                active.queue.appendleft(task)
            return
        self._drop_from_queue(active, task)
        other = active.running.get(task.id)
        if other is not None and other.id != c.attempt.id:
            move_attempt(other, AttemptState.CANCELLED)
            other.finished_at = self.scheduler.clock.now()
            out.superseded.append(other)
        self.canaries.known.pop(task.id, None)
        if decision.outcome == Outcome.FAILED:
            self.reject(decision.losers, f"task {task.id}: {decision.detail}")
            self._fail(active, task, decision.detail, out)
            return
        out.paid.update(self._accept(active, task, decision))
        if active.open_tasks == 0:
            out.finished.append(active)

    def _accept(self, active: ActiveJob, task: Task, decision: Decision) -> dict[str, int]:
        """Pays every agreeing replica and countersigns the receipt; attempt -> credit."""
        sched, job = self.scheduler, active.job
        cost = job.task_cost(task.work)
        winners, losers = decision.winners, decision.losers
        costs = [job.task_cost(work_of(task, w)) for w in winners]  # a spot check: its crop
        paid = sched.ledger.pay(
            [
                Payment(job, task.id, w.attempt_id, w.node_id, c, _reason(decision))
                for w, c in zip(winners, costs, strict=True)
            ]
        )
        job.cost_spent += sum(c for c, new in zip(costs, paid, strict=True) if new)
        agreeing = [w.node_id for w in winners]
        first = winners[0]
        results = active.replicas.get(task.id, [])
        for replica in results:
            if any(replica is w for w in winners):
                replica.state = ReplicaState.VALID
        self.store.update_replicas(results)
        self.reject(losers, f"outvoted on task {task.id}: {decision.detail}")
        reputations = self.verifier.reputations
        if decision.method in _COMPARED:
            reputations.validated(agreeing)
        else:
            reputations.accepted_unchecked(first.node_id)
        whole = [w for w in winners if not w.params]
        if len(whole) >= 2:  # a known answer only from whole results that agreed, not a crop
            self.canaries.offer(job, task, whole)
        validation = common_pb2.Validation(
            job_id=job.id,
            task_id=task.id,
            attempt_id=first.attempt_id,
            node_id=first.node_id,
            method=decision.method,
            agreeing_nodes=agreeing,
            detail=decision.detail,
            credit=cost,
        )
        validation.validated_at.FromNanoseconds(int(sched.clock.now() * 1e9))
        receipt = common_pb2.Receipt.FromString(first.receipt)
        move_task(task, TaskState.SUCCEEDED)
        task.node_id, task.outputs = first.node_id, first.outputs
        task.receipt = countersign(self.signer, receipt, validation).SerializeToString()
        self.store.add_blob_owners(sorted({r.digest for r in first.outputs}), job.account_id)
        active.open_tasks -= 1
        active.succeeded += 1
        sched.forget_replicas(active, task.id)
        return {w.attempt_id: c for w, c, new in zip(winners, costs, paid, strict=True) if new}

    def settle_stranded(self) -> Settled:
        """Adaptive tasks held for a node of another owner when no such node is online any
        more (it left, or its volunteer paused it), so a job never waits for a check nobody
        can run: a single held result is accepted unchecked; results that disagree fail the
        task, since nobody is left to tell which is right (neither node is struck)."""
        sched, out = self.scheduler, Settled()
        for active in list(sched.jobs.values()):
            if active.job.replicas != 0:
                continue
            for task in [t for t in active.queue if active.replicas.get(t.id)]:
                if sched.others_online(active, active.excluded.get(task.id, set())):
                    continue
                held = active.replicas[task.id]
                self._drop_from_queue(active, task)
                if len(held) == 1:
                    detail = "the nodes of other owners left before checking it"
                    decision = Decision(
                        Outcome.ACCEPTED, common_pb2.VALIDATION_METHOD_UNCHECKED, detail,
                        [held[0]],
                    )  # fmt: skip
                    self._accept(active, task, decision)
                else:
                    detail = (
                        f"{len(held)} results of different owners disagree and no node of "
                        "another owner is online to decide"
                    )
                    self._fail(active, task, detail, out)
                self.store.update_tasks([task])
                out.jobs.add(active.job.id)
                if active.open_tasks == 0 and not active.failed:
                    out.finished.append(active)
        for job_id in out.jobs:
            self.store.update_job(sched.jobs[job_id].job)
        return out

    def _fail(self, active: ActiveJob, task: Task, detail: str, out: Settled) -> None:
        """The task ends failed: its results could not be brought to agree."""
        move_task(task, TaskState.FAILED)
        task.error = f"NO_AGREEMENT: {detail}"
        active.open_tasks -= 1
        active.failed += 1
        self.scheduler.forget_replicas(active, task.id)
        out.failed.append((active, f"task {task.index} failed: {task.error}"))

    def reject(self, losers: list[Replica], reason: str) -> None:
        """Outvoted results: their attempts become REJECTED, their nodes take a strike."""
        if not losers:
            return
        batch = self._batch
        earlier = [r.attempt_id for r in losers if r.attempt_id not in batch]
        stored = {a.id: a for a in self.store.get_attempts(earlier)}
        stored.update((r.attempt_id, batch[r.attempt_id]) for r in losers if r.attempt_id in batch)
        for loser in losers:
            loser.state = ReplicaState.INVALID
            attempt = stored.get(loser.attempt_id)
            if attempt is not None and attempt.state == AttemptState.SUCCEEDED:
                move_attempt(attempt, AttemptState.REJECTED)
                attempt.error_code, attempt.error = "INVALID_RESULT", reason[:2000]
            self.verifier.reputations.invalid(loser.node_id, reason)
        self.store.update_attempts(list(stored.values()))
        self.store.update_replicas(losers)

    @staticmethod
    def _drop_from_queue(active: ActiveJob, task: Task) -> None:
        if task.state == TaskState.QUEUED:
            active.queue = type(active.queue)(t for t in active.queue if t.id != task.id)


def _running_is(active: ActiveJob, task: Task, attempt: Attempt) -> bool:
    running = active.running.get(task.id)
    return running is None or running.id == attempt.id


def _reason(decision: Decision) -> str:
    names = {
        common_pb2.VALIDATION_METHOD_QUORUM: "quorum",
        common_pb2.VALIDATION_METHOD_CROSS_CHECKED: "cross-checked",
        common_pb2.VALIDATION_METHOD_TRUSTED: "trusted node",
        common_pb2.VALIDATION_METHOD_UNCHECKED: "unchecked",
        common_pb2.VALIDATION_METHOD_SINGLE: "single result",
        common_pb2.VALIDATION_METHOD_KNOWN_ANSWER: "known answer",
        common_pb2.VALIDATION_METHOD_SPOT_CHECKED: "spot-checked",
    }
    return f"validated result ({names.get(decision.method, 'accepted')}): {decision.detail}"
