"""Applies verification decisions: results held, tasks accepted or failed, nodes paid,
reputations moved and receipts countersigned, all in the caller's transaction.

Intake hands over each result that passed its checks (signature, lease, inputs, output
digests); what happens next depends on the job's verification policy (verification.py).
"""

import functools
import logging
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

from sparegrid.coordinator.domain import (
    Attempt,
    AttemptState,
    Dispute,
    DisputeState,
    FileRef,
    Replica,
    ReplicaState,
    Task,
    TaskState,
    node_account,
)
from sparegrid.coordinator.services.canaries import Canaries
from sparegrid.coordinator.services.comparators import Reader
from sparegrid.coordinator.services.events import EventKind
from sparegrid.coordinator.services.identity import Identities, is_anonymous
from sparegrid.coordinator.services.ledger import Payment
from sparegrid.coordinator.services.scheduler import ActiveJob, Scheduler
from sparegrid.coordinator.services.spotcheck import work_of
from sparegrid.coordinator.services.verification import Decision, Outcome, Verifier
from sparegrid.coordinator.services.vouching import Held, Vouching
from sparegrid.coordinator.states import move_attempt, move_task
from sparegrid.v1 import common_pb2
from sparegrid.v1.common_pb2 import Receipt, Validation
from sparegrid.wire import Signer
from sparegrid.wire.receipt import countersign_batch

log = logging.getLogger("sparegrid.coordinator.settlement")


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
    jobs: set[str] = field(default_factory=set)
    paid: dict[str, int] = field(default_factory=dict)  # attempt -> credit paid now
    # nodes paid, each with its balance after: each is told its total
    credited: dict[str, int] = field(default_factory=dict)
    # decisions taken, by (job kind, outcome): what the metrics count
    outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)


@dataclass
class Writes:
    """What one settle writes, gathered and written once at its end: a batch of results
    costs a few statements, not a few per result (each a round trip on PostgreSQL).
    Objects are kept, not copies, so each row is written as it ends up."""

    replicas: dict[str, Replica] = field(default_factory=dict)  # new, by attempt id
    changed: dict[str, Replica] = field(default_factory=dict)  # stored before, changed
    attempts: dict[str, Attempt] = field(default_factory=dict)
    tasks: dict[str, Task] = field(default_factory=dict)
    payments: list[Payment] = field(default_factory=list)
    owners: dict[str, set[str]] = field(default_factory=dict)  # account -> blob digests
    # receipts to countersign, by job: one signature for each job's (_countersign)
    receipts: dict[str, list[tuple[Task, Receipt, Validation]]] = field(default_factory=dict)


class Settlement:
    def __init__(
        self,
        scheduler: Scheduler,
        verifier: Verifier,
        signer: Signer,
        canaries: Canaries,
        identities: Identities,
        vouching: Vouching,
    ) -> None:
        self.identities = identities
        self.vouching = vouching
        self._writes = Writes()
        self.canaries = canaries
        self.scheduler = scheduler
        self.store = scheduler.store
        self.verifier = verifier
        self.signer = signer

    def settle(
        self, node_id: str, owner: str, candidates: list[Candidate], read: Reader
    ) -> Settled:
        """Records each candidate as a held result and applies its task's decision."""
        with self._gathering():
            return self._settle(node_id, owner, candidates, read)

    @contextmanager
    def _gathering(self) -> Iterator[None]:
        """One settle: what it changes is gathered afresh (Writes, and reputations) and
        written at its end (`_write`); a settle that fails leaves nothing for the next."""
        with self.verifier.reputations.batched():
            self._writes = Writes()
            yield

    def _settle(
        self, node_id: str, owner: str, candidates: list[Candidate], read: Reader
    ) -> Settled:
        sched = self.scheduler
        now = sched.clock.now()
        out = Settled()
        writes = self._writes
        writes.attempts.update((c.attempt.id, c.attempt) for c in candidates)
        decided: set[str] = set()  # tasks an earlier result of this batch decided
        for c in candidates:
            # a node holding two attempts of one task (its first lease ran out, the task
            # came back to it) may return both in one batch: the first decides the task
            # (and cancels the other, still running); the second is too late to count
            if c.task.id in decided or c.attempt.state == AttemptState.CANCELLED:
                continue
            active = sched.jobs[c.task.job_id]
            sched.took(active, c.attempt)
            move_attempt(c.attempt, AttemptState.SUCCEEDED)
            c.attempt.finished_at = now
            out.released.append(c.attempt)
            replica = Replica(
                c.attempt.id,
                c.task.id,
                c.task.job_id,
                node_id,
                owner,
                c.outputs,
                c.receipt,
                created_at=now,
                params=c.attempt.params,
            )
            writes.replicas[replica.attempt_id] = replica
            sched.hold_replica(active, replica)
            results = active.replicas.get(c.task.id, [])
            excluded = active.excluded.get(c.task.id, set())
            known = self.canaries.known.get(c.task.id)
            decision = self.verifier.decide(
                active.job,
                c.task,
                results,
                read,
                functools.partial(sched.others_online, active, excluded),
                known,
            )
            writes.tasks[c.task.id] = c.task
            out.jobs.add(active.job.id)
            out.outcomes[active.job.kind, decision.outcome.value] += 1
            if decision.evidence is not None:
                self._dispute(c.task, decision, now)
            self._apply(active, c, decision, out)
            if decision.outcome in (Outcome.ACCEPTED, Outcome.FAILED):
                decided.add(c.task.id)
        self._write(out)
        self.store.add_node_counts(node_id, len(candidates), 0)
        return out

    def _write(self, out: Settled) -> None:
        """Writes what the settle gathered (Writes), and pays: what each payment booked
        (False: that attempt was paid already) goes into `out` and the job's spending."""
        writes, store = self._writes, self.store
        self._countersign(writes.receipts)
        if writes.replicas:
            store.add_replicas(list(writes.replicas.values()))
        if writes.payments:
            booked = self.scheduler.ledger.pay(writes.payments)
            for payment, new in zip(writes.payments, booked.new, strict=True):
                if new:
                    payment.job.cost_spent += payment.amount
                    out.paid[payment.attempt_id] = payment.amount
                    account = node_account(payment.node_id)
                    out.credited[payment.node_id] = booked.balances[account]
        changed = [r for k, r in writes.changed.items() if k not in writes.replicas]
        if changed:
            store.update_replicas(changed)
        if writes.attempts:
            store.update_attempts(list(writes.attempts.values()))
        if writes.tasks:
            store.update_tasks(list(writes.tasks.values()))
        for account, digests in writes.owners.items():
            store.add_blob_owners(sorted(digests), account)
        for job_id in out.jobs:
            store.update_job(self.scheduler.jobs[job_id].job)

    def _countersign(self, receipts: dict[str, list[tuple[Task, Receipt, Validation]]]) -> None:
        """Countersigns the receipts of the tasks this settle accepted, with one signature
        per job (over their Merkle root; countersign_batch), not one per task: a signature
        was a fifth of the coordinator's CPU per result with tiny tasks."""
        for signing in receipts.values():
            pairs = [(receipt, validation) for _, receipt, validation in signing]
            signed = countersign_batch(self.signer, pairs)
            for (task, _, _), receipt in zip(signing, signed, strict=True):
                task.receipt = receipt.SerializeToString()

    def _attempts(self, ids: list[str]) -> list[Attempt]:
        """The attempts, as this settle changed them so far; the others from the store."""
        writes = self._writes
        missing = [i for i in ids if i not in writes.attempts]
        if missing:
            writes.attempts.update((a.id, a) for a in self.store.get_attempts(missing))
        return [writes.attempts[i] for i in dict.fromkeys(ids) if i in writes.attempts]

    def _replicas_changed(self, replicas: list[Replica]) -> None:
        self._writes.changed.update((r.attempt_id, r) for r in replicas)

    def _apply(self, active: ActiveJob, c: Candidate, decision: Decision, out: Settled) -> None:
        task = c.task
        if decision.outcome in (Outcome.PENDING, Outcome.HELD):
            if task.state == TaskState.LEASED and _running_is(active, task, c.attempt):
                move_task(task, TaskState.QUEUED)
                if decision.outcome == Outcome.PENDING:
                    active.queue.appendleft(task)
                else:
                    self._hold(active, task, decision)
            # else a late result (its lease ran out): its task is queued again or running
            # elsewhere, and is never held besides; the result waits among the task's
            # replicas for the next one, and is compared and paid with it
            return
        self._drop_from_queue(active, task)
        if active.held.pop(task.id, None) is not None:  # decided by a late result instead
            self.vouching.forget(task.id)  # of the check of its node: vouched for by none
        other = active.running.get(task.id)
        if other is not None and other.id != c.attempt.id:
            move_attempt(other, AttemptState.CANCELLED)
            other.finished_at = self.scheduler.clock.now()
            out.superseded.append(other)
            self._writes.attempts[other.id] = other
        self.canaries.known.pop(task.id, None)
        if decision.outcome == Outcome.FAILED:
            # only a known answer fails a task with a loser: proof of a wrong result
            self.reject(decision.losers, f"task {task.id}: {decision.detail}", active, task)
            self._fail(active, task, decision.detail, out)
            self._after_check(task, decision, out)  # a check that failed vouches for none
            return
        self._accept(active, task, decision, out)
        if active.open_tasks == 0:
            out.finished.append(active)
        self._after_check(task, decision, out)

    def _accept(self, active: ActiveJob, task: Task, decision: Decision, out: Settled) -> None:
        """Pays every agreeing replica (at the settle's end, into `out`) and countersigns
        the receipt."""
        sched, job, writes = self.scheduler, active.job, self._writes
        cost = job.task_cost(task.work)
        winners, losers = decision.winners, decision.losers
        why = _reason(decision)
        writes.payments += [  # a spot check's winner is paid for its crop
            Payment(job, task.id, w.attempt_id, w.node_id, job.task_cost(work_of(task, w)), why)
            for w in winners
        ]
        agreeing = [w.node_id for w in winners]
        first = winners[0]
        results = active.replicas.get(task.id, [])
        for replica in results:
            if any(replica is w for w in winners):
                replica.state = ReplicaState.VALID
        self._replicas_changed(results)
        reason = f"outvoted on task {task.id}: {decision.detail}"
        self.reject(losers, reason, active, task if decision.confirmed else None)
        sched.validated(active, [w.attempt_id for w in winners], [r.attempt_id for r in losers])
        reputations = self.verifier.reputations
        confirmed = {r.node_id for r in decision.confirmed}
        reputations.validated([n for n in agreeing if n in confirmed])
        for node_id in agreeing:
            if node_id not in confirmed:
                reputations.accepted_unchecked(node_id)
        # a known answer only from whole results of vetted owners that agreed, not a crop
        whole = [w for w in decision.confirmed if not w.params and self.verifier.vetted(w.owner)]
        if len(whole) >= 2:
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
        writes.receipts.setdefault(job.id, []).append((task, receipt, validation))
        writes.owners.setdefault(job.account_id, set()).update(r.digest for r in first.outputs)
        writes.tasks[task.id] = task
        active.open_tasks -= 1
        active.succeeded += 1
        sched.forget_replicas(active, task.id)

    # --- vouching: results accepted on their node's record (vouching.py) ---------------

    def _hold(self, active: ActiveJob, task: Task, decision: Decision) -> None:
        active.held[task.id] = task
        held = Held(active.job.id, task, decision, self.scheduler.clock.now())
        picked = self.vouching.hold(decision.voucher, held)
        if picked is not None:
            self._send_to_check(picked)

    def _send_to_check(self, held: Held) -> None:
        """A held result goes to a node of another owner: the check of its node. One no
        longer held (never so after `job_ended`) is no check: the results it would have
        vouched for wait for another."""
        active = self.scheduler.jobs.get(held.job_id)
        if active is not None and active.held.pop(held.task.id, None) is not None:
            active.queue.appendleft(held.task)
        else:
            self.vouching.unpick(held.task.id)

    def job_ended(self, job_id: str) -> None:
        """A job ended (cancelled, failed, done): its held results are forgotten, and a
        check of a node among its tasks, which will now give no answer, no longer keeps
        the node's other held results waiting: they wait for another check."""
        self.vouching.ended(job_id)

    def check_idle(self, job_ids: Iterable[str]) -> None:
        """After the commit, once leases are given back: see `_check_idle`."""
        for job_id in job_ids:
            active = self.scheduler.jobs.get(job_id)
            if active is not None:
                self._check_idle(active)

    def _check_idle(self, active: ActiveJob) -> None:
        """A job with nothing left to run but held results picks a check for each node
        holding some of them: its client never waits for results of other jobs."""
        if active.held and not active.queue and not active.running:
            for node_id in self.vouching.nodes_of(active.job.id):
                picked = self.vouching.pick(node_id, active.job.id)
                if picked is not None:
                    self._send_to_check(picked)

    def pick_overdue(self) -> None:
        """Picks a check for each node whose held results waited too long."""
        for node_id in self.vouching.overdue():
            picked = self.vouching.pick(node_id)
            if picked is not None:
                self._send_to_check(picked)

    def _after_check(self, task: Task, decision: Decision, out: Settled) -> None:
        """A picked result was decided: its node's held results are accepted when the
        check confirmed it (or nobody was left to check it), thrown away otherwise."""
        pick = self.vouching.checked(task.id)
        if pick is None:
            return
        confirmed = any(r.node_id == pick.node_id for r in decision.confirmed)
        unchecked = decision.method == common_pb2.VALIDATION_METHOD_UNCHECKED
        for held in pick.vouched:
            if decision.outcome == Outcome.ACCEPTED and (confirmed or unchecked):
                self._vouch(held, task, unchecked, out)
            else:
                self._rerun(held)

    def _vouch(self, held: Held, check: Task, unchecked: bool, out: Settled) -> None:
        active = self.scheduler.jobs.get(held.job_id)
        if active is None or active.held.pop(held.task.id, None) is None:
            return
        decision = replace(held.decision, outcome=Outcome.ACCEPTED)
        if unchecked:
            decision.method = common_pb2.VALIDATION_METHOD_UNCHECKED
            decision.detail = "no node of another owner was online to check its node"
        else:
            decision.detail += f"; vouched for by a check of its node on task {check.id}"
        self._accept(active, held.task, decision, out)
        out.jobs.add(active.job.id)
        if active.open_tasks == 0:
            out.finished.append(active)

    def _rerun(self, held: Held) -> None:
        """A held result of a node caught cheating: thrown away (not paid, not struck
        again), its task queued for a node of another owner."""
        active = self.scheduler.jobs.get(held.job_id)
        if active is None or active.held.pop(held.task.id, None) is None:
            return
        results = active.replicas.pop(held.task.id, [])
        for replica in results:
            replica.state = ReplicaState.INVALID
        for attempt in self._attempts([r.attempt_id for r in results]):
            if attempt.state == AttemptState.SUCCEEDED:
                move_attempt(attempt, AttemptState.REJECTED)
                attempt.error_code = "DISCARDED"
                attempt.error = "held for a later check of its node, which failed one"
        self._replicas_changed(results)
        active.queue.appendleft(held.task)

    def settle_stranded(self) -> Settled:
        """Adaptive tasks held for a check when no node that could run it is online any
        more (it left, or its volunteer paused it), so a job never waits for a check nobody
        can run: a single held result of a vetted owner is accepted unchecked. Anything
        else stays queued and the job says why (waiting): an anonymous result needs a vetted
        check, and results that disagree need a node of another owner to decide."""
        with self._gathering():
            return self._settle_stranded()

    def _settle_stranded(self) -> Settled:
        sched, out = self.scheduler, Settled()
        vetted = self.verifier.vetted
        self.pick_overdue()
        for active in list(sched.jobs.values()):
            if active.job.replicas != 0:
                continue
            self._check_idle(active)
            single = [i for i, held in active.replicas.items() if len(held) == 1]
            for task_id in [i for i in single if i in active.queue]:
                held = active.replicas[task_id]
                if held[0].params or not vetted(held[0].owner):
                    continue
                if sched.others_online(active, active.excluded.get(task_id, set())):
                    continue
                task = active.queue.remove(task_id)
                if task is None:
                    continue
                detail = "the nodes of other owners left before checking it"
                decision = Decision(
                    Outcome.ACCEPTED, common_pb2.VALIDATION_METHOD_UNCHECKED, detail, [held[0]]
                )
                self._accept(active, task, decision, out)
                self._after_check(task, decision, out)  # unchecked: so are those it vouches
                out.jobs.add(active.job.id)
                if active.open_tasks == 0 and not active.failed:
                    out.finished.append(active)
        self._write(out)
        return out

    def _dispute(self, task: Task, decision: Decision, now: float) -> None:
        """Stores what disagreed on a task, and how it stands."""
        states = {
            Outcome.PENDING: DisputeState.OPEN,
            Outcome.ACCEPTED: DisputeState.SETTLED,
            Outcome.HELD: DisputeState.SETTLED,
            Outcome.FAILED: DisputeState.FAILED,
        }
        evidence = dict(decision.evidence or {})
        evidence["decision"] = decision.detail or "waits for a node of another owner to decide"
        if decision.outcome == Outcome.ACCEPTED:
            evidence["winners"] = [w.node_id for w in decision.winners]
            evidence["losers"] = [r.node_id for r in decision.losers]
        state = states[decision.outcome]
        self.store.put_disputes(
            [Dispute(task.id, task.job_id, task.index, state, evidence, now, now)]
        )
        events = self.scheduler.events
        if events is not None:
            events.emit(
                EventKind.DISPUTE,
                f"task {task.index} of job {task.job_id}: results disagree; {state}: "
                f"{evidence['decision']}",
                job_id=task.job_id,
                task_id=task.id,
                index=task.index,
                state=state.value,
                nodes=sorted({str(r.get("node", "")) for r in _results(evidence)}),
            )

    def _fail(self, active: ActiveJob, task: Task, detail: str, out: Settled) -> None:
        """The task ends failed: its results could not be brought to agree. The rest of the
        job runs on; it ends failed, and `job retry --failed` runs such tasks again."""
        move_task(task, TaskState.FAILED)
        task.error = f"NO_AGREEMENT: {detail}"
        active.open_tasks -= 1
        active.failed += 1
        self.scheduler.forget_replicas(active, task.id)
        if not active.job.error:
            active.job.error = f"task {task.index} failed: {task.error}"
        events = self.scheduler.events
        if events is not None:
            events.emit(
                EventKind.TASK_FAILED,
                f"task {task.index} of job {task.job_id}: {task.error}",
                job_id=task.job_id,
                task_id=task.id,
                account=active.owner,
                index=task.index,
                code="NO_AGREEMENT",
                final=True,
            )
        if active.open_tasks == 0:
            out.finished.append(active)

    def reject(
        self,
        losers: list[Replica],
        reason: str,
        active: ActiveJob | None = None,
        proven: Task | None = None,
    ) -> None:
        """Outvoted results: their attempts become REJECTED, their nodes take a strike.
        `proven`: the task, when vetted owners (or a known answer) proved the results
        wrong: their owners' stakes are slashed, paying the job's client."""
        if not losers:
            return
        if active is not None and proven is not None:
            self._slash(active, proven, losers, reason)
        stored = {a.id: a for a in self._attempts([r.attempt_id for r in losers])}
        for node_id in {r.node_id for r in losers}:
            for held in self.vouching.discard(node_id):
                self._rerun(held)
        for loser in losers:
            loser.state = ReplicaState.INVALID
            attempt = stored.get(loser.attempt_id)
            if attempt is not None and attempt.state == AttemptState.SUCCEEDED:
                move_attempt(attempt, AttemptState.REJECTED)
                attempt.error_code, attempt.error = "INVALID_RESULT", reason[:2000]
            self.verifier.reputations.invalid(loser.node_id, reason)
            self.scheduler.shrink(loser.node_id, reset=True)
        self._replicas_changed(losers)

    def _slash(self, active: ActiveJob, task: Task, losers: list[Replica], reason: str) -> None:
        identities = self.identities
        for loser in losers:
            stake = identities.stake(loser.owner)
            if is_anonymous(loser.owner) or stake <= 0:
                continue
            due = identities.config.slash_factor * active.job.task_cost(work_of(task, loser))
            amount = min(stake, due)
            why = f"slashed: node {loser.node_id} returned a wrong result ({reason})"
            if self.scheduler.ledger.slash(loser, active.job, active.owner, amount, why[:500]):
                identities.set_stake(loser.owner, stake - amount)
                log.warning("owner %s slashed %d: %s", loser.owner, amount, why)

    @staticmethod
    def _drop_from_queue(active: ActiveJob, task: Task) -> None:
        if task.state == TaskState.QUEUED:
            active.queue.remove(task.id)


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


def _results(evidence: dict[str, object]) -> list[dict[str, object]]:
    """The results a dispute's evidence lists (each names its node)."""
    results = evidence.get("results")
    return [r for r in results if isinstance(r, dict)] if isinstance(results, list) else []
