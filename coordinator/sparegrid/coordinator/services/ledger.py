"""Credit: grants, escrow at submit, payment per accepted result, refund at the end.

Every movement is one balanced transaction with an idempotency key, so a retried or
replayed operation books nothing twice.
"""

from dataclasses import dataclass, field

from sparegrid.coordinator.clock import Clock
from sparegrid.coordinator.domain import (
    MINT,
    Job,
    Posting,
    Replica,
    Transaction,
    client_account,
    escrow_account,
    new_id,
    node_account,
    stake_account,
)
from sparegrid.coordinator.services.events import EventKind, Events
from sparegrid.coordinator.states import FINAL_JOB_STATES
from sparegrid.coordinator.store.base import Posted, Store


@dataclass
class LedgerReport:
    balanced: bool
    problems: list[str] = field(default_factory=list)
    transactions: int = 0
    entries: int = 0
    total: int = 0


@dataclass
class Payment:
    job: Job
    task_id: str
    attempt_id: str
    node_id: str
    amount: int
    reason: str  # why, in words: "validated result (2 of 2 owners agreed)"


class Ledger:
    events: Events | None = None  # every movement but a payment is an event

    def __init__(self, store: Store, clock: Clock) -> None:
        self._store = store
        self._clock = clock

    def _post(
        self,
        key: str,
        reason: str,
        src: str,
        dst: str,
        amount: int,
        job: str = "",
        task: str = "",
        flow: str = "other",
    ) -> bool:
        """Posts one movement; `flow` names it for the metrics and the event."""
        txn = self._txn(key, reason, src, dst, amount, job, task)
        posted = self._store.post(txn)
        if posted and self.events is not None:
            self.events.emit(
                EventKind.LEDGER,
                f"{amount} credit from {src} to {dst}: {reason}",
                job_id=job,
                task_id=task,
                transaction=txn.id,
                amount=amount,
                src=src,
                dst=dst,
                flow=flow,
            )
        return posted

    def _txn(
        self, key: str, reason: str, src: str, dst: str, amount: int, job: str, task: str
    ) -> Transaction:
        return Transaction(
            id=new_id(),
            idempotency_key=key,
            reason=reason,
            postings=[Posting(src, -amount), Posting(dst, amount)],
            job_id=job,
            task_id=task,
            created_at=self._clock.now(),
        )

    def grant(self, account_name: str, amount: int, key: str, reason: str = "grant") -> bool:
        return self._post(key, reason, MINT, client_account(account_name), amount, flow="granted")

    def debit(self, account_name: str, amount: int, key: str, reason: str = "debit") -> bool:
        """Takes credit from an account back to the mint; InsufficientFunds if short."""
        return self._post(key, reason, client_account(account_name), MINT, amount, flow="debited")

    def hold(self, job: Job, account_name: str, amount: int = 0, key: str = "") -> None:
        """Moves the job's maximum cost (or `amount` more, for a retry: `key` tells one
        retry from another) into its escrow; InsufficientFunds if short."""
        self._post(
            f"hold:{job.id}{key}",
            "escrow for job" if not key else "escrow for a retry of the job's failed tasks",
            client_account(account_name),
            escrow_account(job.id),
            amount or job.cost_held,
            job=job.id,
            flow="escrowed",
        )

    def pay(self, payments: list["Payment"]) -> Posted:
        """Pays nodes for validated results from their jobs' escrow; per payment, False
        if that attempt was paid already, and the balances after (nodes' included)."""
        txns = [
            self._txn(
                f"pay:{p.task_id}:{p.attempt_id}",
                p.reason,
                escrow_account(p.job.id),
                node_account(p.node_id),
                p.amount,
                p.job.id,
                p.task_id,
            )
            for p in payments
        ]
        return self._store.post_many(txns)

    def stake(self, owner: str, amount: int, key: str) -> bool:
        """Locks an owner's credit as a bond for its nodes."""
        return self._post(
            f"stake:{key}",
            "stake locked",
            client_account(owner),
            stake_account(owner),
            amount,
            flow="staked",
        )

    def unstake(self, owner: str, amount: int, key: str) -> bool:
        return self._post(
            f"unstake:{key}",
            "stake released",
            stake_account(owner),
            client_account(owner),
            amount,
            flow="unstaked",
        )

    def slash(self, loser: Replica, job: Job, client: str, amount: int, reason: str) -> bool:
        """Takes `amount` of a wrong result's owner's stake and pays the job's client;
        once per result."""
        return self._post(
            f"slash:{loser.attempt_id}",
            reason,
            stake_account(loser.owner),
            client_account(client),
            amount,
            job=job.id,
            task=loser.task_id,
            flow="slashed",
        )

    def refund(self, job: Job, account_name: str) -> int:
        """Returns what is left in the job's escrow to the client; the amount refunded.

        Once per end of the job: a retry holds more (cost_held grows), so each end has a
        key of its own; a second refund of one end finds the escrow empty anyway."""
        left = self._store.balance(escrow_account(job.id))
        if left and self._post(
            f"refund:{job.id}:{job.cost_held}",
            f"refund ({job.state})",
            escrow_account(job.id),
            client_account(account_name),
            left,
            job=job.id,
            flow="refunded",
        ):
            return left
        return 0

    def check(self) -> LedgerReport:
        """Recomputes everything from the entries and says exactly where it does not add up."""
        store = self._store
        report = LedgerReport(balanced=True)
        report.transactions, report.entries, report.total = store.ledger_totals()
        problems = report.problems
        if report.total:
            problems.append(f"all entries sum to {report.total}, not 0")
        for txn_id, total in store.unbalanced_transactions():
            problems.append(f"transaction {txn_id} sums to {total}, not 0")
        cached = store.balances()
        computed = store.computed_balances()
        for account in sorted(set(cached) | set(computed)):
            want, have = computed.get(account, 0), cached.get(account, 0)
            if want != have:
                problems.append(f"{account}: cached balance {have}, entries sum to {want}")
            if account != MINT and want < 0:
                problems.append(f"{account} is below zero ({want})")
        paid = store.payments_by_job()
        for job in store.list_jobs(limit=1_000_000_000):
            escrow = computed.get(escrow_account(job.id), 0)
            if job.state in FINAL_JOB_STATES and escrow:
                problems.append(f"job {job.id} is {job.state} but its escrow still holds {escrow}")
            if paid.get(job.id, 0) != job.cost_spent:
                problems.append(
                    f"job {job.id} records {job.cost_spent} spent, "
                    f"nodes were paid {paid.get(job.id, 0)}"
                )
        report.balanced = not problems
        return report
