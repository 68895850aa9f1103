"""Known-answer (canary) tasks: copies of cross-checked tasks whose answer the coordinator
knows, handed out like any other work.

A share of the results that two owners agreed on become canaries: the same kind,
parameters and inputs in a job of their own (owned by a system account and paid from
credit granted for it), never given to an owner that made the known answer. To a node a
canary is one more task; a wrong answer to it is caught without a second run, which is
what catches nodes that agree on the same lazy answer.
"""

import random
import secrets
import uuid
from dataclasses import dataclass

from sparegrid.coordinator.clock import Clock
from sparegrid.coordinator.domain import (
    Account,
    FileRef,
    Job,
    Replica,
    ReplicaState,
    Task,
    client_account,
)
from sparegrid.coordinator.services.accounts import hash_key
from sparegrid.coordinator.services.ledger import Ledger
from sparegrid.coordinator.services.scheduler import Scheduler
from sparegrid.coordinator.store.base import BalanceOverflow, Store

CANARY_ACCOUNT = "sparegrid-canary"


@dataclass
class CanaryConfig:
    # share of results agreed by two owners that are re-issued as known-answer tasks
    rate: float = 0.02


class Canaries:
    def __init__(
        self,
        store: Store,
        ledger: Ledger,
        scheduler: Scheduler,
        clock: Clock,
        config: CanaryConfig,
        rng: random.Random | None = None,
    ) -> None:
        self._store = store
        self._ledger = ledger
        self._scheduler = scheduler
        self._clock = clock
        self.config = config
        self.rng = rng or random.Random()
        self.known: dict[str, list[FileRef]] = {}  # canary task id -> the known outputs
        self._account_id = ""

    def load(self) -> None:
        """Finds the open canaries' known answers after a start."""
        account = self._store.get_account_by_name(CANARY_ACCOUNT)
        self._account_id = account.id if account is not None else ""
        self.known.clear()
        tasks = [
            t.id
            for a in self._scheduler.jobs.values()
            if self.is_canary(a.job)
            for t in a.queue.materialised()
        ]
        tasks += [
            t for a in self._scheduler.jobs.values() if self.is_canary(a.job) for t in a.running
        ]
        for replica in self._store.get_replicas(tasks):
            if replica.known_answer:
                self.known[replica.task_id] = replica.outputs

    def is_canary(self, job: Job) -> bool:
        return bool(self._account_id) and job.account_id == self._account_id

    def offer(self, job: Job, task: Task, agreed: list[Replica]) -> str:
        """Maybe re-issues a task two owners agreed on as a canary; its id, or ""."""
        if self.is_canary(job) or self.rng.random() >= self.config.rate:
            return ""
        owners = {r.owner for r in agreed}
        if not any(s.node.owner not in owners for s in self._scheduler.sessions.values()):
            return ""  # nobody else is connected to run it: it would only wait in the queue
        now = self._clock.now()
        account = self._ensure_account()
        canary = Job(
            id=uuid.uuid4().hex,
            account_id=account.id,
            kind=job.kind,
            name="",
            params=job.params,
            inputs=dict(job.inputs),
            requirements=job.requirements,
            max_attempts=1,
            price_credit=job.price_credit,
            price_units=job.price_units,
            task_count=1,
            created_at=now,
            replicas=1,
            quorum=1,
        )
        canary.cost_held = canary.task_cost(task.work)
        copy = Task(f"{canary.id}-0", canary.id, 0, task.params, list(task.inputs), work=task.work)
        outputs = agreed[0].outputs
        # the known answer, stored once per owner that made it: with no node behind them,
        # these references are what keeps those owners off the canary, after a restart too
        references = []
        for owner in sorted({r.owner for r in agreed}):
            reference = Replica(
                f"known:{copy.id}:{owner}",
                copy.id,
                canary.id,
                "",
                owner,
                outputs,
                b"",
                ReplicaState.VALID,
                now,
            )
            references.append(reference)
        short = canary.cost_held - self._store.balance(client_account(CANARY_ACCOUNT))
        if short > 0:  # refunds of earlier canaries pay for later ones first
            try:  # before anything is written: a grant past the ledger's limit skips it
                self._ledger.grant(
                    CANARY_ACCOUNT, short, f"canary:{canary.id}", "funds known-answer tasks"
                )
            except BalanceOverflow:
                return ""
        self._store.create_job(canary, [copy])
        self._ledger.hold(canary, CANARY_ACCOUNT)
        self._store.add_replicas(references)
        self._scheduler.add_job(canary, CANARY_ACCOUNT, [copy])
        active = self._scheduler.jobs[canary.id]
        for reference in references:
            self._scheduler.hold_replica(active, reference)
        self.known[copy.id] = outputs
        return canary.id

    def _ensure_account(self) -> Account:
        account = self._store.get_account_by_name(CANARY_ACCOUNT)
        if account is None:  # a system account nobody holds a key to
            account = Account(
                uuid.uuid4().hex,
                CANARY_ACCOUNT,
                hash_key(secrets.token_hex(32)),
                False,
                self._clock.now(),
            )
            self._store.create_account(account)
        self._account_id = account.id
        return account
