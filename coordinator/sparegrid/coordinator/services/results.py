"""Takes in a node's signed result batches and failure reports.

A batch is checked against the node's key before anything in it is believed; each result
is then accepted only for an attempt leased to that node, and paid once. Everything a
batch changes commits in one transaction, before the node is acknowledged.
"""

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from sparegrid.coordinator.blobs import BlobStore
from sparegrid.coordinator.domain import (
    Attempt,
    AttemptLog,
    AttemptState,
    FileRef,
    Replica,
    Task,
    owner_of,
    printable,
)
from sparegrid.coordinator.errors import CoordinatorError
from sparegrid.coordinator.services.comparators import Reader
from sparegrid.coordinator.services.inputs import MissingInputs
from sparegrid.coordinator.services.quotas import Holder, InlineCharges, Quotas
from sparegrid.coordinator.services.scheduler import NodeSession, Scheduler
from sparegrid.coordinator.services.settlement import Candidate, Settled, Settlement
from sparegrid.coordinator.states import FINAL_TASK_STATES, move_attempt
from sparegrid.v1 import common_pb2
from sparegrid.wire import BadSignature, MerkleTree, is_digest, sha256_hex
from sparegrid.wire.codes import FailureCode, VerdictCode
from sparegrid.wire.receipt import (
    MAX_INLINE_OUTPUT,
    MAX_INLINE_RESULT,
    MAX_OUTPUT_NAME,
    MAX_OUTPUTS,
    decode_statement,
)
from sparegrid.wire.signing import RESULT_BATCH_TAG, verify
from sparegrid.wire.tasklog import SUCCEEDED, LogTooLarge, verify_log

log = logging.getLogger("sparegrid.coordinator.results")


@dataclass
class Verdict:
    attempt_id: str
    accepted: bool
    code: str = ""
    message: str = ""
    credit: int = 0  # paid for this attempt now (0 also when it is paid later, once validated)


# the logs kept per job at most (64 MiB of text): a job whose million tasks all fail keeps
# the first ones, which say what the rest would
MAX_LOGS_PER_JOB = 1000
PREEMPTED = FailureCode.PREEMPTED  # stopped by the node's policy: re-queued, not held against it


@dataclass
class Failure:
    attempt_id: str
    code: str
    message: str
    retryable: bool
    log: common_pb2.TaskLog | None = None


class BadResult(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class Intake:
    def __init__(
        self, scheduler: Scheduler, blobs: BlobStore, settlement: Settlement, quotas: Quotas
    ) -> None:
        self.scheduler = scheduler
        self.store = scheduler.store
        self.blobs = blobs
        self.settlement = settlement
        self.quotas = quotas  # inline outputs count against the node holder's stored quota
        self.on_settled: Callable[[Settled], None] | None = None  # the metrics count them
        self.missing_inputs = MissingInputs(scheduler, blobs)  # INPUT_UNAVAILABLE failures

    def results(
        self,
        node_id: str,
        statements: list[bytes],
        signature: bytes,
        inline: dict[str, bytes],
        logs: list[common_pb2.TaskLog] | None = None,
    ) -> list[Verdict]:
        """Verifies and records a batch; returns a verdict per statement. A result whose
        log does not check out, or whose inline outputs do not fit its node's stored
        quota, is refused whole (nothing of it is recorded); a refused result of a running
        attempt of this node ends the attempt (`_refused`)."""
        session = self.scheduler.sessions.get(node_id)
        node = session.node if session is not None else self.store.get_node(node_id)
        if node is None or not statements:
            return [Verdict("", False, "BAD_BATCH", "empty batch or unknown node")]
        try:
            tree = MerkleTree(statements)
            verify(node.public_key, RESULT_BATCH_TAG, tree.root, signature)
        except BadSignature as exc:
            log.warning("node %s sent a batch with a bad signature: %s", node_id, exc)
            self.strike(node_id, f"a result batch with a bad signature: {exc}")
            return [Verdict("", False, "BAD_SIGNATURE", str(exc))]
        decoded = [_decode(data) for data in statements]
        attempts, tasks = self._lookup(session, [s.attempt_id for s in decoded if s is not None])
        charges = self.quotas.inline(Holder.of(owner_of(node)))
        charges.look_up(_named_inline(node_id, decoded, attempts, inline))  # one read
        by_attempt = {_log_attempt(log): log for log in logs or ()}
        verdicts: list[Verdict] = []
        accepted: list[Candidate] = []
        kept: list[AttemptLog] = []
        refused: list[Attempt] = []
        seen: set[str] = set()
        for index, statement in enumerate(decoded):
            if statement is None:
                verdicts.append(Verdict("", False, "BAD_STATEMENT", "statement does not decode"))
                continue
            if statement.attempt_id in seen:
                verdicts.append(
                    Verdict(statement.attempt_id, False, VerdictCode.DUPLICATE, "twice in batch")
                )
                continue
            seen.add(statement.attempt_id)
            try:
                outputs = self._check(node_id, statement, attempts, tasks, inline)
                sent = by_attempt.get(statement.attempt_id)
                if sent is not None and statement.attempt_id in attempts:
                    attempt = attempts[statement.attempt_id]
                    checked = self._log(node.public_key, attempt, tasks[attempt.task_id], sent)
                    if checked.outcome != SUCCEEDED:
                        raise BadResult(VerdictCode.BAD_LOG, "a result's log names a failure")
                    if self._keeps_logs(attempt.job_id):
                        kept.append(checked)
                if attempts[statement.attempt_id].state != AttemptState.SUCCEEDED:
                    _charge(charges, outputs, inline)
            except BadResult as exc:
                verdicts.append(Verdict(statement.attempt_id, False, exc.code, str(exc)))
                if exc.code == "NOT_LEASED":
                    self.strike(node_id, f"claimed a result for {exc}")
                elif exc.code == "OUTPUT_NOT_UPLOADED":
                    self.strike(node_id, f"claimed an output it never sent: {exc}")
                elif exc.code == VerdictCode.INLINE_TOO_LARGE:
                    self.strike(node_id, f"sent outputs inline past the limit: {exc}")
                ended = attempts.get(statement.attempt_id)
                if ended is not None and _ends_attempt(node_id, ended, exc.code):
                    ended.error_code, ended.error = exc.code, str(exc)[:2000]
                    refused.append(ended)
                continue
            attempt = attempts[statement.attempt_id]
            if attempt.state == AttemptState.SUCCEEDED:
                verdicts.append(Verdict(attempt.id, True, VerdictCode.DUPLICATE, "accepted before"))
                continue
            receipt = common_pb2.Receipt(
                statement=statements[index],
                leaf_index=index,
                leaf_count=len(statements),
                proof=tree.proof(index),
                signature=signature,
                public_key=node.public_key,
            )
            task = tasks[attempt.task_id]
            accepted.append(Candidate(attempt, task, outputs, receipt.SerializeToString()))
            verdicts.append(Verdict(attempt.id, True))
        taken = {c.attempt.id for c in accepted}
        logs_kept = [k for k in kept if k.attempt_id in taken]
        paid = self._accept(node_id, accepted, inline, charges, logs_kept)
        self.scheduler.returned(node_id, len(accepted))
        self._refused(refused, charges.full)
        for verdict in verdicts:  # made here, for this batch: set in place
            if verdict.accepted:
                verdict.credit = paid.get(verdict.attempt_id, 0)
        return verdicts

    def _refused(self, attempts: list[Attempt], full: set[str]) -> None:
        """Ends the attempts whose result was refused: the worker never sends another
        result for an attempt (it logs the verdict and forgets it), so the task goes on
        now, not when the lease reaches its maximum age. A result refused for the node's
        owner's quota gives its attempt back (no fault of the task's); any other counts
        as a failed attempt, as a failure the worker reported would."""
        if not attempts:
            return
        now = self.scheduler.clock.now()
        for attempt in attempts:
            move_attempt(attempt, AttemptState.FAILED)
            attempt.finished_at = now
        log.info("%d attempt(s) ended: their results were refused", len(attempts))
        quota = [a for a in attempts if a.error_code == VerdictCode.QUOTA_EXCEEDED]
        self.scheduler.turned_away(quota, full)
        failed = [a for a in attempts if a.error_code != VerdictCode.QUOTA_EXCEEDED]
        self.scheduler.settle_failures(failed, retryable=True)

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
        if task.job_id not in self.scheduler.jobs:
            # a large job's queued tasks are marked cancelled a slice at a time after it
            # ends: a late result for an expired lease of one of them found it still queued
            raise BadResult("TASK_DONE", f"job {task.job_id} has ended")
        claimed = [(i.name, i.digest) for i in statement.inputs]
        if claimed != [(ref.name, ref.digest) for ref in task.inputs]:
            raise BadResult("BAD_STATEMENT", "statement's inputs are not the task's inputs")
        if len(statement.outputs) > MAX_OUTPUTS:
            raise BadResult("BAD_STATEMENT", f"a result names at most {MAX_OUTPUTS} outputs")
        carried: dict[str, int] = {}  # inline bytes by digest: one blob named twice is sent once
        for out in statement.outputs:
            if len(out.name) > MAX_OUTPUT_NAME:
                raise BadResult(
                    "BAD_OUTPUT", f"an output's name is at most {MAX_OUTPUT_NAME} characters"
                )
            if not out.name.isprintable():  # signed, so not rewritten: the client lists it
                raise BadResult("BAD_OUTPUT", f"output {out.name!r} is not printable text")
            if not is_digest(out.digest):
                raise BadResult("BAD_OUTPUT", f"output {out.name!r} has a malformed digest")
            size = len(inline.get(out.digest, b""))
            if size > MAX_INLINE_OUTPUT:
                raise BadResult(
                    VerdictCode.INLINE_TOO_LARGE,
                    f"output {out.name!r} was sent inline with {size} bytes; at most "
                    f"{MAX_INLINE_OUTPUT} go inline, larger ones are uploaded",
                )
            carried[out.digest] = size
        if sum(carried.values()) > MAX_INLINE_RESULT:
            raise BadResult(
                VerdictCode.INLINE_TOO_LARGE,
                f"a result's inline outputs hold {sum(carried.values())} bytes; at most "
                f"{MAX_INLINE_RESULT}",
            )
        named = [o.digest for o in statement.outputs if o.digest not in inline]
        uploaded = self.store.uploaded(attempt.id, named)
        return [self._output(attempt, out, inline, uploaded) for out in statement.outputs]

    def _output(
        self,
        attempt: Attempt,
        out: common_pb2.OutputRef,
        inline: dict[str, bytes],
        uploaded: set[str],
    ) -> FileRef:
        """An output the node produced: sent inline in the batch, or uploaded by the node
        for this attempt. Naming any other stored blob (another client's input, say) is
        refused: settlement would make the job's owner an owner of it."""
        data = inline.get(out.digest)
        if data is not None:
            if len(data) != out.size or sha256_hex(data) != out.digest:
                raise BadResult("BAD_OUTPUT", f"inline output {out.name!r} does not match")
        elif out.digest not in uploaded:
            raise BadResult(
                "OUTPUT_NOT_UPLOADED",
                f"output {out.name!r} was neither sent inline nor uploaded by this node for "
                f"attempt {attempt.id}",
            )
        elif self.blobs.size(out.digest) != out.size:
            raise BadResult("BAD_OUTPUT", f"output {out.name!r} is not {out.size} bytes")
        return FileRef(out.name, out.digest, out.size)

    def _log(
        self, public_key: bytes, attempt: Attempt, task: Task, log: common_pb2.TaskLog
    ) -> AttemptLog:
        """A node's signed log of one of its attempts, checked; BadResult says what is wrong."""
        try:
            verified = verify_log(public_key, log)
        except LogTooLarge as exc:
            raise BadResult(VerdictCode.LOG_TOO_LARGE, str(exc)) from None
        except BadSignature as exc:
            raise BadResult(
                VerdictCode.BAD_LOG, f"the task log does not check out: {exc}"
            ) from None
        s = verified.statement
        if (s.attempt_id, s.task_id, s.job_id) != (attempt.id, task.id, task.job_id):
            raise BadResult(VerdictCode.BAD_LOG, "the task log names another attempt")
        return AttemptLog(
            attempt_id=attempt.id,
            job_id=task.job_id,
            task_id=task.id,
            task_index=task.index,
            node_id=attempt.node_id,
            outcome=s.outcome[:64],
            statement=bytes(log.statement),
            signature=bytes(log.signature),
            text=verified.text,
            public_key=public_key,
            received_at=self.scheduler.clock.now(),
        )

    def _keep_logs(self, logs: list[AttemptLog]) -> None:
        """Stores the logs, up to MAX_LOGS_PER_JOB per job; the rest are dropped."""
        room: dict[str, int] = {}
        kept: list[AttemptLog] = []
        for log in logs:
            if log.job_id not in room:
                room[log.job_id] = MAX_LOGS_PER_JOB - self.store.task_log_count(log.job_id)
            if room[log.job_id] > 0:
                room[log.job_id] -= 1
                kept.append(log)
        self.store.add_task_logs(kept)

    def _keeps_logs(self, job_id: str) -> bool:
        active = self.scheduler.jobs.get(job_id)
        job = active.job if active is not None else self.store.get_job(job_id)
        return job is not None and job.keep_logs

    def _accept(
        self,
        node_id: str,
        accepted: list[Candidate],
        inline: dict[str, bytes],
        charges: InlineCharges,
        logs: list[AttemptLog] | None = None,
    ) -> dict[str, int]:
        """Settles the results, their inline outputs kept and charged to the node's holder;
        returns the credit paid now, by attempt (a result held for a cross-check is paid
        later, when validated)."""
        if not accepted:
            return {}
        store = self.store
        with store.transaction():
            used = {ref.digest for c in accepted for ref in c.outputs}
            kept = {d: inline[d] for d in used if d in inline}
            now = self.scheduler.clock.now()
            holder = charges.holder
            fresh = charges.fresh(kept)
            store.put_inline_blobs(kept, now, holder.name, holder.anonymous, fresh)
            self._keep_logs(logs or [])
            settled = self.settlement.settle(node_id, holder.name, accepted, self._reader(inline))
        self._settled(settled)
        log.debug("node %s: %d result(s) taken in", node_id, len(accepted))
        return settled.paid

    def _settled(self, settled: Settled) -> None:
        """After the commit: leases given back, nodes told, jobs ended, watchers woken."""
        sched = self.scheduler
        if self.on_settled is not None:
            self.on_settled(settled)
        for attempt in settled.released:
            sched._release(attempt)
        for other in settled.superseded:
            sched._release(other, cancel_reason="another node finished the task first")
        for node_id, total in settled.credited.items():  # read as they were paid
            session = sched.sessions.get(node_id)
            if session is not None:
                session.sink.credited(total)
        for active in settled.finished:
            if active.job.id in sched.jobs:
                sched.finish(active)
        self.settlement.check_idle(settled.jobs)
        if settled.jobs:
            sched.on_change(settled.jobs)

    def comparisons(
        self, node_id: str, statements: list[bytes], inline: dict[str, bytes]
    ) -> Callable[[], None] | None:
        """The comparisons settling this batch will make (each new result against the
        results its task holds), as work for a worker thread to do first; None when there
        are none. Settlement then finds the answers cached. Runs on the event loop and only
        reads: what it gets wrong (a stale lease, say) settlement works out for itself."""
        session = self.scheduler.sessions.get(node_id)
        if session is None:
            return None
        pairs: list[tuple[str, Task, Replica, Replica]] = []
        for statement in map(_decode, statements):
            lease = session.leases.get(statement.attempt_id) if statement is not None else None
            active = self.scheduler.jobs.get(lease.task.job_id) if lease is not None else None
            if statement is None or lease is None or active is None:
                continue
            task, attempt = lease.task, lease.attempt
            outputs = [FileRef(o.name, o.digest, o.size) for o in statement.outputs]
            new = Replica(
                attempt.id, task.id, task.job_id, node_id, "", outputs, b"", params=attempt.params
            )
            held = active.replicas.get(task.id, [])
            pairs += [(active.job.kind, task, earlier, new) for earlier in held]
        if not pairs:
            return None
        digests = {ref.digest for _, _, a, b in pairs for ref in a.outputs + b.outputs}
        # the batch's inline bytes are not checked yet: only those that match their digest,
        # or a node could have a comparison answered for bytes it never returns
        found = {d: inline[d] for d in digests if d in inline and sha256_hex(inline[d]) == d}
        for digest in digests - found.keys():
            data = self.store.get_inline_blob(digest)
            if data is not None:
                found[digest] = data
        blobs = self.blobs

        def read(digest: str) -> bytes:  # no store: its connection stays on the loop's thread
            data = found.get(digest)
            return data if data is not None else blobs.path(digest).read_bytes()

        return functools.partial(self.settlement.verifier.precompute, pairs, read)

    def _reader(self, inline: dict[str, bytes]) -> Reader:
        """Reads an output's bytes for a comparator: inline, kept in the store, or a blob."""

        def read(digest: str) -> bytes:
            data = inline.get(digest)
            if data is None:
                data = self.store.get_inline_blob(digest)
            if data is None:
                data = self.blobs.path(digest).read_bytes()
            return data

        return read

    def settle_stranded(self) -> None:
        """Adaptive tasks held for a check that no online node can run: one result is
        accepted unchecked, disagreeing results fail the task."""
        with self.store.transaction():
            settled = self.settlement.settle_stranded()
        self._settled(settled)

    def strike(self, node_id: str, reason: str) -> None:
        """A node sent something only a broken or dishonest node sends."""
        self.settlement.verifier.reputations.invalid(node_id, reason)
        self.scheduler.shrink(node_id, reset=True)

    def failures(self, node_id: str, failures: list[Failure]) -> list[Verdict]:
        """Records failed attempts. A failure whose log does not check out is recorded
        without it, its verdict refusing the log: the failure is the node's own to give
        (it ends nothing but its own attempt), and a worker sends no other, so keeping the
        attempt leased would hold its task until the lease's maximum age."""
        attempts = {a.id: a for a in self.store.get_attempts([f.attempt_id for f in failures])}
        logs = self._failure_logs(node_id, failures, attempts)
        kept: list[AttemptLog] = []
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
            task_log = logs.get(attempt.id)
            if isinstance(task_log, BadResult):
                why = f"{task_log}; the failure is recorded without its log"
                verdicts.append(Verdict(attempt.id, False, task_log.code, why))
                task_log = None
            else:
                verdicts.append(Verdict(attempt.id, True))
            if attempt.state != AttemptState.RUNNING:
                continue  # reported before, or the lease was taken back already
            is_preempted = failure.code == PREEMPTED
            move_attempt(attempt, AttemptState.CANCELLED if is_preempted else AttemptState.FAILED)
            attempt.finished_at = now
            # the node's words reach the client's terminal (job get, events): no escapes
            attempt.error_code = printable(failure.code[:64])
            attempt.error = printable(failure.message[:2000])
            if task_log is not None:
                kept.append(task_log)
            if is_preempted:
                preempted.append(attempt)
                continue
            failed.append(attempt)
            flags.append(failure.retryable)
        self._keep_logs(kept)
        self.scheduler.preempted(preempted)
        self.scheduler.settle_failures(failed, retryable=flags)
        self.missing_inputs.unavailable(failed)
        return verdicts

    def _failure_logs(
        self, node_id: str, failures: list[Failure], attempts: dict[str, Attempt]
    ) -> dict[str, AttemptLog | BadResult]:
        """The checked log of each failure of this node's attempts that carries one."""
        carried = [
            (attempt, f)
            for f in failures
            if f.log is not None
            and (attempt := attempts.get(f.attempt_id)) is not None
            and attempt.node_id == node_id
        ]
        if not carried:
            return {}
        session = self.scheduler.sessions.get(node_id)
        node = session.node if session is not None else self.store.get_node(node_id)
        tasks = {t.id: t for t in self.store.get_tasks([a.task_id for a, _ in carried])}
        found: dict[str, AttemptLog | BadResult] = {}
        for attempt, failure in carried:
            assert failure.log is not None and node is not None
            try:
                checked = self._log(node.public_key, attempt, tasks[attempt.task_id], failure.log)
                if checked.outcome != failure.code[:64]:
                    raise BadResult(VerdictCode.BAD_LOG, "the task log names another outcome")
                found[attempt.id] = checked
            except BadResult as exc:
                log.warning("node %s sent a task log that was refused: %s", node_id, exc)
                found[attempt.id] = exc
        return found


def _named_inline(
    node_id: str,
    decoded: "list[common_pb2.ResultStatement | None]",
    attempts: dict[str, Attempt],
    inline: dict[str, bytes],
) -> list[str]:
    """The inline blobs that the batch's results for this node's unsettled attempts name
    (at most MAX_OUTPUTS each): whose charges are read in one query, not one per result;
    never more than what the node's own leases can claim, whatever else the batch holds."""
    named: dict[str, None] = {}
    for statement in decoded:
        attempt = attempts.get(statement.attempt_id) if statement is not None else None
        if statement is None or attempt is None:
            continue
        if attempt.node_id == node_id and attempt.state != AttemptState.SUCCEEDED:
            outputs = statement.outputs[:MAX_OUTPUTS]
            named.update((out.digest, None) for out in outputs if inline.get(out.digest))
    return list(named)


# Refusals that say nothing of the attempt itself: it ended already (STALE), or its task
# did (TASK_DONE). Every other refusal of a result for a running attempt leased to the
# sending node ends the attempt: a worker never sends a second result for one.
_KEEPS_ATTEMPT = frozenset({VerdictCode.STALE, VerdictCode.TASK_DONE})


def _ends_attempt(node_id: str, attempt: Attempt, code: str) -> bool:
    """Whether a refused result ends its attempt: only an attempt of the sending node
    that is still running (a statement naming another node's attempt changes nothing of
    it, and a late result for an expired lease has nothing left to end)."""
    return (
        attempt.node_id == node_id
        and attempt.state == AttemptState.RUNNING
        and code not in _KEEPS_ATTEMPT
    )


def _charge(charges: InlineCharges, outputs: list[FileRef], inline: dict[str, bytes]) -> None:
    """Counts a result's inline outputs against its node's stored quota; BadResult
    (QUOTA_EXCEEDED, not a strike: an honest node over its quota sends this too) when they
    do not fit."""
    sizes = {ref.digest: ref.size for ref in outputs if ref.digest in inline}
    try:
        charges.take(sizes)
    except CoordinatorError as exc:
        raise BadResult(VerdictCode.QUOTA_EXCEEDED, exc.message) from None


def _log_attempt(log: common_pb2.TaskLog) -> str:
    """The attempt a log says it is for (believed only once its signature is checked)."""
    statement = common_pb2.LogStatement()
    try:
        statement.ParseFromString(log.statement)
    except DecodeError:
        return ""
    return statement.attempt_id


def _decode(data: bytes) -> common_pb2.ResultStatement | None:
    try:
        return decode_statement(data)
    except BadSignature:
        return None
