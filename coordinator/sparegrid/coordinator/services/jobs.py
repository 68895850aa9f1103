"""Submitting, reading and cancelling jobs, on behalf of one account."""

import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from sparegrid.coordinator.blobs import BlobStore, check_digest
from sparegrid.coordinator.clock import Clock
from sparegrid.coordinator.domain import (
    Account,
    FileRef,
    Job,
    JobState,
    Requirements,
    Task,
    TaskState,
    client_account,
)
from sparegrid.coordinator.errors import CoordinatorError, ErrorKind, invalid, not_found
from sparegrid.coordinator.kinds import JobKind, decode_params, encode_params
from sparegrid.coordinator.services.ledger import Ledger
from sparegrid.coordinator.services.scheduler import Scheduler
from sparegrid.coordinator.services.verification import check_policy, policy_text
from sparegrid.coordinator.states import reopen_job, reopen_task
from sparegrid.coordinator.store.base import Conflict, InsufficientFunds, Store

_VERSION = re.compile(r"\d+\.\d+")
MAX_ATTEMPTS = 10
RETRYABLE = frozenset({JobState.FAILED, JobState.CANCELLED})
RETRYABLE_TASKS = frozenset({TaskState.FAILED, TaskState.CANCELLED})


@dataclass
class JobSpec:
    kind: str
    name: str = ""
    params: bytes = b""
    inputs: dict[str, str] = field(default_factory=dict)
    requirements: Requirements = field(default_factory=Requirements)
    max_attempts: int = 0
    idempotency_key: str = ""
    replicas: int = 0  # 0 and 0: the adaptive policy
    quorum: int = 0


@dataclass(frozen=True)
class Price:
    """`credit` per `units` work units of a kind; a task costs at least 1."""

    credit: int = 1
    units: int = 1

    def __post_init__(self) -> None:
        if self.credit < 1 or self.units < 1:
            raise ValueError(f"a price is positive credit per positive units, not {self}")

    def __str__(self) -> str:
        return f"{self.credit}/{self.units}" if self.units != 1 else str(self.credit)


def parse_price(text: str) -> Price:
    """ "CREDIT" or "CREDIT/UNITS"; ValueError saying what is wrong."""
    credit, _, units = text.partition("/")
    if not credit.isdigit() or (units and not units.isdigit()):
        raise ValueError(f"a price is CREDIT or CREDIT/UNITS (positive integers), got {text!r}")
    return Price(int(credit), int(units or 1))


@dataclass
class JobsConfig:
    prices: dict[str, Price]  # by kind; a kind not listed costs 1 credit per work unit
    default_max_attempts: int = 3
    # how many owners could vote on a quorum at most: accounts whose nodes' results count
    voters: Callable[[], int] | None = None


class Jobs:
    def __init__(
        self,
        store: Store,
        ledger: Ledger,
        scheduler: Scheduler,
        blobs: BlobStore,
        kinds: dict[str, JobKind],
        clock: Clock,
        config: JobsConfig,
    ) -> None:
        self._store = store
        self._ledger = ledger
        self._scheduler = scheduler
        self._blobs = blobs
        self.kinds = kinds
        self._clock = clock
        self._config = config

    def price(self, kind: str) -> Price:
        return self._config.prices.get(kind, Price())

    def submit(self, account: Account, spec: JobSpec) -> Job:
        if spec.idempotency_key:
            existing = self._store.find_job(account.id, spec.idempotency_key)
            if existing is not None:
                return existing
        kind = self.kinds.get(spec.kind)
        if kind is None:
            known = ", ".join(sorted(self.kinds))
            raise invalid("UNKNOWN_KIND", f"unknown job kind {spec.kind!r}; known kinds: {known}")
        _check_spec(spec)
        self._check_quorum(spec)
        plans = kind.plan(
            decode_params(spec.params), self._inputs(account, spec.inputs), self._blobs
        )
        price = self.price(spec.kind)
        job_id = uuid.uuid4().hex
        job = Job(
            id=job_id,
            account_id=account.id,
            kind=spec.kind,
            name=spec.name,
            params=spec.params,
            inputs=dict(spec.inputs),
            requirements=spec.requirements,
            max_attempts=spec.max_attempts or self._config.default_max_attempts,
            price_credit=price.credit,
            price_units=price.units,
            task_count=len(plans),
            created_at=self._clock.now(),
            idempotency_key=spec.idempotency_key,
            replicas=spec.replicas,
            quorum=spec.quorum,
        )
        job.cost_held = sum(job.task_cost(p.work) for p in plans) * job.max_paid_results
        balance = self._store.balance(client_account(account.name))
        if job.cost_held > balance:  # refused before any task row is written
            raise _short(account, job, balance)
        tasks = [
            Task(
                id=f"{job_id}-{i}",
                job_id=job_id,
                index=i,
                params=encode_params(p.params),
                inputs=p.inputs,
                work=p.work,
            )
            for i, p in enumerate(plans)
        ]
        try:
            with self._store.transaction():
                self._store.create_job(job, tasks)
                self._ledger.hold(job, account.name)
        except InsufficientFunds as exc:  # spent meanwhile by a concurrent submit
            raise _short(account, job, exc.balance) from None
        except Conflict:  # the same submit raced itself: return the winner
            existing = self._store.find_job(account.id, spec.idempotency_key)
            if existing is None:
                raise
            return existing
        self._scheduler.add_job(job, account.name, tasks)
        self._scheduler.dispatch()
        return job

    def _check_quorum(self, spec: JobSpec) -> None:
        """Refuses a quorum that could never form: more replicas than there are owner
        accounts whose nodes' results count."""
        voters = self._config.voters
        if spec.replicas < 2 or voters is None:
            return
        available = voters()
        if spec.replicas > available:
            raise CoordinatorError(
                ErrorKind.PRECONDITION,
                "QUORUM_UNREACHABLE",
                f"policy {spec.quorum} of {spec.replicas} needs results from {spec.replicas} "
                f"owner accounts whose nodes' results count; this coordinator has "
                f"{available}: ask for fewer replicas or the adaptive policy",
            )

    def _inputs(self, account: Account, inputs: dict[str, str]) -> dict[str, FileRef]:
        refs: dict[str, FileRef] = {}
        for name, digest in inputs.items():
            check_digest(digest)
            size = self._blobs.size(digest)
            if size is None or not self._store.blob_owned(digest, account.id):
                raise not_found(
                    "BLOB_NOT_FOUND", f"input {name!r}: blob {digest} not found; upload it first"
                )
            refs[name] = FileRef(name, digest, size)
        return refs

    def get(self, account: Account, job_id: str) -> Job:
        job = self._store.get_job(job_id) if job_id else None
        if job is None or job.account_id != account.id:
            raise not_found("JOB_NOT_FOUND", f"no job {job_id!r} in account {account.name!r}")
        return job

    def list_jobs(self, account: Account, limit: int) -> list[Job]:
        return self._store.list_jobs(account.id, limit=min(max(limit, 1), 1000))

    def counts(self, job_id: str) -> dict[TaskState, int]:
        active = self._scheduler.jobs.get(job_id)
        return active.counts() if active is not None else self._store.task_counts(job_id)

    def waiting(self, job_id: str) -> str:
        """Why a running job's queued tasks cannot run now; "" once it is final."""
        active = self._scheduler.jobs.get(job_id)
        return self._scheduler.waiting(active) if active is not None else ""

    def cancel(self, account: Account, job_id: str) -> Job:
        job = self.get(account, job_id)
        active = self._scheduler.jobs.get(job.id)
        if active is not None:
            self._scheduler.finish(active, JobState.CANCELLED, "cancelled by the client")
        return self.get(account, job_id)

    def retry(self, account: Account, job_id: str) -> Job:
        """Runs the tasks of a failed or cancelled job that did not succeed again, with
        their attempts counted afresh, holding their cost in escrow again; the results of
        the tasks that succeeded stay."""
        job = self.get(account, job_id)
        if job.id in self._scheduler.jobs or job.state not in RETRYABLE:
            raise CoordinatorError(
                ErrorKind.PRECONDITION,
                "JOB_NOT_RETRYABLE",
                f"job {job.id} is {job.state.value}: only a failed or cancelled job is retried",
            )
        tasks = [t for t in self._all_tasks(job.id) if t.state in RETRYABLE_TASKS]
        if not tasks:
            raise CoordinatorError(
                ErrorKind.PRECONDITION, "NOTHING_TO_RETRY", f"every task of job {job.id} succeeded"
            )
        hold = sum(job.task_cost(t.work) for t in tasks) * job.max_paid_results
        balance = self._store.balance(client_account(account.name))
        if hold > balance:
            raise CoordinatorError(
                ErrorKind.PRECONDITION,
                "INSUFFICIENT_CREDIT",
                f"running {len(tasks)} task(s) again costs up to {hold} credit, account "
                f"{account.name!r} holds {balance}",
            )
        for task in tasks:
            reopen_task(task)
            task.attempts, task.error = 0, ""
        reopen_job(job)
        job.error, job.finished_at, job.cost_held = "", None, job.cost_held + hold
        with self._store.transaction():
            self._store.update_tasks(tasks)
            self._store.update_job(job)
            self._ledger.hold(job, account.name, hold, key=f":retry:{uuid.uuid4().hex}")
        self._scheduler.add_job(job, account.name, tasks)
        self._scheduler.dispatch()
        return job

    def _all_tasks(self, job_id: str) -> list[Task]:
        tasks: list[Task] = []
        while page := self._store.list_tasks(job_id, tasks[-1].index if tasks else -1, 1000):
            tasks += page
        return tasks

    def results(self, account: Account, job_id: str, after: int, limit: int) -> list[Task]:
        self.get(account, job_id)
        return self._store.list_tasks(job_id, after_index=after, limit=limit)


def _short(account: Account, job: Job, balance: int) -> CoordinatorError:
    paid = job.max_paid_results
    return CoordinatorError(
        ErrorKind.PRECONDITION,
        "INSUFFICIENT_CREDIT",
        f"job costs up to {job.cost_held} credit ({job.task_count} tasks, up to {paid} "
        f"paid results each under the {policy_text(job)} policy), "
        f"account {account.name!r} holds {balance}",
    )


def _check_spec(spec: JobSpec) -> None:
    if len(spec.name) > 200:
        raise invalid("BAD_NAME", "job name is longer than 200 characters")
    if not 0 <= spec.max_attempts <= MAX_ATTEMPTS:
        raise invalid("BAD_ATTEMPTS", f"max_attempts must be 0 (default) to {MAX_ATTEMPTS}")
    problem = check_policy(spec.replicas, spec.quorum)
    if problem:
        raise invalid("BAD_POLICY", f"verification policy: {problem}")
    req = spec.requirements
    if req.device_kind not in ("", "cpu", "cuda"):
        raise invalid("BAD_REQUIREMENTS", f"device kind {req.device_kind!r} is not cpu or cuda")
    versions = [req.min_compute_capability] if req.min_compute_capability else []
    for version in [*versions, *req.software.values()]:
        if not _VERSION.fullmatch(version):
            raise invalid("BAD_REQUIREMENTS", f"version {version!r} is not major.minor")
