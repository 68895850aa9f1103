"""Takes in a node's signed result batches and failure reports.

A batch is checked against the node's key before anything in it is believed; each result
is then accepted only for an attempt leased to that node, and paid once. Everything a
batch changes commits in one transaction, before the node is acknowledged.
"""

import logging
from dataclasses import dataclass

from sparegrid.coordinator.blobs import BlobStore
from sparegrid.coordinator.domain import (
    Attempt,
    AttemptState,
    FileRef,
    Task,
    TaskState,
)
from sparegrid.coordinator.services.scheduler import ActiveJob, NodeSession, Scheduler
from sparegrid.coordinator.states import FINAL_TASK_STATES, move_attempt, move_task
from sparegrid.v1 import common_pb2
from sparegrid.wire import BadSignature, MerkleTree, is_digest, sha256_hex
from sparegrid.wire.receipt import decode_statement
from sparegrid.wire.signing import RESULT_BATCH_TAG, verify

log = logging.getLogger("sparegrid.coordinator.results")


@dataclass
class Verdict:
    attempt_id: str
    accepted: bool
    code: str = ""
    message: str = ""
    credit: int = 0  # paid to the node for this attempt now


PREEMPTED = "PREEMPTED"  # the node's policy stopped the task: re-queued, not held against it


@dataclass
class Failure:
    attempt_id: str
    code: str
    message: str
    retryable: bool


class BadResult(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class Intake:
    def __init__(self, scheduler: Scheduler, blobs: BlobStore) -> None:
        self.scheduler = scheduler
        self.store = scheduler.store
        self.blobs = blobs

    def results(
        self, node_id: str, statements: list[bytes], signature: bytes, inline: dict[str, bytes]
    ) -> list[Verdict]:
        """Verifies and records a batch; returns a verdict per statement."""
        session = self.scheduler.sessions.get(node_id)
        node = session.node if session is not None else self.store.get_node(node_id)
        if node is None or not statements:
            return [Verdict("", False, "BAD_BATCH", "empty batch or unknown node")]
        try:
            tree = MerkleTree(statements)
            verify(node.public_key, RESULT_BATCH_TAG, tree.root, signature)
        except BadSignature as exc:
            log.warning("node %s sent a batch with a bad signature: %s", node_id, exc)
            return [Verdict("", False, "BAD_SIGNATURE", str(exc))]
        decoded = [_decode(data) for data in statements]
        attempts, tasks = self._lookup(session, [s.attempt_id for s in decoded if s is not None])
        verdicts: list[Verdict] = []
        accepted: list[tuple[Attempt, Task, list[FileRef], bytes]] = []
        seen: set[str] = set()
        for index, statement in enumerate(decoded):
            if statement is None:
                verdicts.append(Verdict("", False, "BAD_STATEMENT", "statement does not decode"))
                continue
            if statement.attempt_id in seen:
                verdicts.append(Verdict(statement.attempt_id, False, "DUPLICATE", "twice in batch"))
                continue
            seen.add(statement.attempt_id)
            try:
                outputs = self._check(node_id, statement, attempts, tasks, inline)
            except BadResult as exc:
                verdicts.append(Verdict(statement.attempt_id, False, exc.code, str(exc)))
                continue
            attempt = attempts[statement.attempt_id]
            if attempt.state == AttemptState.SUCCEEDED:
                verdicts.append(Verdict(attempt.id, True, "DUPLICATE", "accepted before"))
                continue
            receipt = common_pb2.Receipt(
                statement=statements[index],
                leaf_index=index,
                leaf_count=len(statements),
                proof=tree.proof(index),
                signature=signature,
                public_key=node.public_key,
            )
            accepted.append((attempt, tasks[attempt.task_id], outputs, receipt.SerializeToString()))
            active = self.scheduler.jobs.get(attempt.job_id)
            price = active.job.price_per_task if active is not None else 0
            verdicts.append(Verdict(attempt.id, True, credit=price))
        self._accept(node_id, accepted, inline)
        return verdicts

    def _lookup(
        self, session: NodeSession | None, attempt_ids: list[str]
    ) -> tuple[dict[str, Attempt], dict[str, Task]]:
        """The attempts and their tasks: from the session's leases when it holds them
        (the usual case, no query), else from the store (late or repeated results)."""
        attempts: dict[str, Attempt] = {}
        tasks: dict[str, Task] = {}
        missing: list[str] = []
        for attempt_id in attempt_ids:
            lease = session.leases.get(attempt_id) if session is not None else None
            if lease is None:
                missing.append(attempt_id)
            else:
                attempts[attempt_id], tasks[lease.task.id] = lease.attempt, lease.task
        if missing:
            stored = self.store.get_attempts(missing)
            attempts.update((a.id, a) for a in stored)
            tasks.update((t.id, t) for t in self.store.get_tasks([a.task_id for a in stored]))
        return attempts, tasks

    def _check(
        self,
        node_id: str,
        statement: common_pb2.ResultStatement,
        attempts: dict[str, Attempt],
        tasks: dict[str, Task],
        inline: dict[str, bytes],
    ) -> list[FileRef]:
        attempt = attempts.get(statement.attempt_id)
        if attempt is None or attempt.node_id != node_id or statement.node_id != node_id:
            raise BadResult("NOT_LEASED", f"attempt {statement.attempt_id} is not leased to you")
        task = tasks[attempt.task_id]
        if statement.task_id != task.id or statement.job_id != task.job_id:
            raise BadResult("BAD_STATEMENT", "statement names another task or job")
        if attempt.state == AttemptState.SUCCEEDED:
            return []
        if attempt.state not in (AttemptState.RUNNING, AttemptState.EXPIRED):
            raise BadResult("STALE", f"attempt {attempt.id} is {attempt.state}")
        if task.state in FINAL_TASK_STATES:
            raise BadResult("TASK_DONE", f"task {task.id} is {task.state} already")
        claimed = [(i.name, i.digest) for i in statement.inputs]
        if claimed != [(ref.name, ref.digest) for ref in task.inputs]:
            raise BadResult("BAD_STATEMENT", "statement's inputs are not the task's inputs")
        return [self._output(out, inline) for out in statement.outputs]

    def _output(self, out: common_pb2.OutputRef, inline: dict[str, bytes]) -> FileRef:
        if not is_digest(out.digest):
            raise BadResult("BAD_OUTPUT", f"output {out.name!r} has a malformed digest")
        data = inline.get(out.digest)
        if data is not None:
            if len(data) != out.size or sha256_hex(data) != out.digest:
                raise BadResult("BAD_OUTPUT", f"inline output {out.name!r} does not match")
        elif self.blobs.size(out.digest) != out.size:
            raise BadResult("MISSING_OUTPUT", f"output {out.name!r} was not uploaded")
        return FileRef(out.name, out.digest, out.size)

    def _accept(
        self,
        node_id: str,
        accepted: list[tuple[Attempt, Task, list[FileRef], bytes]],
        inline: dict[str, bytes],
    ) -> None:
        if not accepted:
            return
        sched, store = self.scheduler, self.store
        now = sched.clock.now()
        superseded: list[Attempt] = []
        finished: list[ActiveJob] = []
        owned: dict[str, set[str]] = {}  # account id -> output digests it may now read
        with store.transaction():
            used = {ref.digest for _, _, outs, _ in accepted for ref in outs}
            store.put_inline_blobs({d: inline[d] for d in used if d in inline})
            for attempt, task, outputs, receipt in accepted:
                active = sched.jobs[task.job_id]
                other = active.running.get(task.id)
                if other is not None and other.id != attempt.id:
                    move_attempt(other, AttemptState.CANCELLED)
                    other.finished_at = now
                    superseded.append(other)
                move_attempt(attempt, AttemptState.SUCCEEDED)
                attempt.finished_at = now
                if task.state == TaskState.QUEUED:  # a late result for a re-queued task
                    active.queue = type(active.queue)(t for t in active.queue if t.id != task.id)
                move_task(task, TaskState.SUCCEEDED)
                task.node_id, task.outputs, task.receipt = node_id, outputs, receipt
                owned.setdefault(active.job.account_id, set()).update(r.digest for r in outputs)
                active.open_tasks -= 1
                active.succeeded += 1
                if active.open_tasks == 0:
                    finished.append(active)
            for account_id, digests in owned.items():
                store.add_blob_owners(sorted(digests), account_id)
            jobs = [sched.jobs[task.job_id].job for _, task, _, _ in accepted]
            payments = [
                (job, task.id, node_id) for job, (_, task, _, _) in zip(jobs, accepted, strict=True)
            ]
            for job, paid in zip(jobs, sched.ledger.pay(payments), strict=True):
                if paid:
                    job.cost_spent += job.price_per_task
            store.update_attempts([a for a, _, _, _ in accepted] + superseded)
            store.update_tasks([t for _, t, _, _ in accepted])
            store.add_node_counts(node_id, len(accepted), 0)
            for active in {
                id(a): a for a in (sched.jobs[t.job_id] for _, t, _, _ in accepted)
            }.values():
                store.update_job(active.job)
        for attempt, _, _, _ in accepted:
            sched._release(attempt)
        for other in superseded:
            sched._release(other, cancel_reason="another node finished the task first")
        for active in finished:
            sched.finish(active)
        sched.on_change({t.job_id for _, t, _, _ in accepted})
        log.debug("node %s: %d result(s) accepted", node_id, len(accepted))

    def failures(self, node_id: str, failures: list[Failure]) -> list[Verdict]:
        attempts = {a.id: a for a in self.store.get_attempts([f.attempt_id for f in failures])}
        verdicts: list[Verdict] = []
        failed: list[Attempt] = []
        flags: list[bool] = []
        preempted: list[Attempt] = []
        now = self.scheduler.clock.now()
        for failure in failures:
            attempt = attempts.get(failure.attempt_id)
            if attempt is None or attempt.node_id != node_id:
                msg = f"attempt {failure.attempt_id} is not leased to you"
                verdicts.append(Verdict(failure.attempt_id, False, "NOT_LEASED", msg))
                continue
            verdicts.append(Verdict(attempt.id, True))
            if attempt.state != AttemptState.RUNNING:
                continue  # reported before, or the lease was taken back already
            is_preempted = failure.code == PREEMPTED
            move_attempt(attempt, AttemptState.CANCELLED if is_preempted else AttemptState.FAILED)
            attempt.finished_at = now
            attempt.error_code, attempt.error = failure.code[:64], failure.message[:2000]
            if is_preempted:
                preempted.append(attempt)
                continue
            failed.append(attempt)
            flags.append(failure.retryable)
        self.scheduler.requeue_preempted(preempted)
        self.scheduler.settle_failures(failed, retryable=flags)
        return verdicts


def _decode(data: bytes) -> common_pb2.ResultStatement | None:
    try:
        return decode_statement(data)
    except BadSignature:
        return None
