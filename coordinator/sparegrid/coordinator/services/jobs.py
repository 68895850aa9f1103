"""Submitting, reading and cancelling jobs, on behalf of one account."""

import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sparegrid.coordinator.blobs import BlobStore, check_digest
from sparegrid.coordinator.clock import Clock
from sparegrid.coordinator.domain import (
    MAX_BALANCE,
    Account,
    AttemptLog,
    FileRef,
    Job,
    JobState,
    Task,
    TaskState,
    client_account,
)
from sparegrid.coordinator.errors import CoordinatorError, ErrorKind, invalid, not_found
from sparegrid.coordinator.kinds import (
    JobKind,
    TaskPlan,
    check_job_work,
    decode_params,
    encode_params,
)
from sparegrid.coordinator.services.events import EventKind
from sparegrid.coordinator.services.jobspec import JobSpec as JobSpec  # re-exported
from sparegrid.coordinator.services.jobspec import spec_differences, spec_of
from sparegrid.coordinator.services.ledger import Ledger
from sparegrid.coordinator.services.prices import Price
from sparegrid.coordinator.services.scheduler import Scheduler
from sparegrid.coordinator.services.verification import check_policy, policy_text
from sparegrid.coordinator.states import FINAL_JOB_STATES, move_job
from sparegrid.coordinator.store.base import Conflict, InsufficientFunds, Store
from sparegrid.wire import is_digest

_VERSION = re.compile(r"\d+\.\d+")
MAX_ATTEMPTS = 10
INPUTS_LOOKED_UP = 1000  # a submit naming more looks the rest up on the event loop
MAX_PRIORITY = 100
# every state but SUBMITTING: a job whose submit is still being written is nobody's yet
VISIBLE_JOB_STATES: list[JobState] = [s for s in JobState if s != JobState.SUBMITTING]


@dataclass
class Draft:
    """A submit checked against the store, ready to plan."""

    account: Account
    spec: JobSpec
    kind: JobKind
    params: dict[str, Any]
    inputs: dict[str, FileRef]


@dataclass
class Planned:
    """A job split into tasks and priced, not recorded yet."""

    account: Account
    job: Job
    plans: Sequence[TaskPlan]

    def tasks(self, start: int = 0, stop: int | None = None) -> list[Task]:
        """The job's tasks [start, stop), made from their plans."""
        job_id = self.job.id
        plans = self.plans[start:stop]
        encoded: dict[int, bytes] = {}  # plans often share one params dict (echo's do)
        tasks = []
        for i, p in enumerate(plans, start):
            params = encoded.get(id(p.params))
            if params is None:
                params = encoded[id(p.params)] = encode_params(p.params)
            task = Task(f"{job_id}-{i}", job_id, i, params, list(p.inputs), work=p.work)
            tasks.append(task)
        return tasks


@dataclass
class JobsConfig:
    prices: dict[str, Price]  # by kind; a kind not listed costs 1 credit per work unit
    default_max_attempts: int = 3
    # how many owners could vote on a quorum at most: accounts whose nodes' results count
    voters: Callable[[], int] | None = None
    # refuses a webhook URL, raising CoordinatorError (services/webhooks.py)
    check_webhook: Callable[[str], None] = lambda url: None


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

    def _submitted(self, job: Job, account: Account) -> None:
        events = self._scheduler.events
        if events is not None:
            events.emit(
                EventKind.JOB_SUBMITTED,
                f"job {job.id} ({job.kind}, {job.task_count} tasks) submitted by {account.name}",
                job_id=job.id,
                account=account.name,
                job_kind=job.kind,
                tasks=job.task_count,
                name=job.name[:200],
                cost_held=job.cost_held,
            )

    def price(self, kind: str) -> Price:
        return self._config.prices.get(kind, Price())

    def submit(self, account: Account, spec: JobSpec) -> Job:
        """Checks, plans and records a job in one go, on the caller's thread: for tests and
        in-process use. The coordinator's servicer goes through `App.submit`, which plans
        off the event loop and writes a large job's tasks a step at a time."""
        draft = self.prepare(account, spec)
        if isinstance(draft, Job):
            return draft
        planned = self.plan(draft)
        return self.commit(planned, planned.tasks())

    def prepare(self, account: Account, spec: JobSpec) -> "Job | Draft":
        """Checks a submit against the store: the job an identical earlier submit made
        (its idempotency key), or a draft to plan. Refuses a key reused with another spec."""
        if spec.idempotency_key:
            existing = self._store.find_job(account.id, spec.idempotency_key)
            if existing is not None:
                if existing.state == JobState.SUBMITTING:
                    raise CoordinatorError(
                        ErrorKind.ABORTED,
                        "SUBMIT_IN_PROGRESS",
                        f"a submit with idempotency key {spec.idempotency_key!r} is still "
                        "being written; retry in a moment",
                    )
                self.check_same(spec, spec_of(existing), f"job {existing.id}")
                return existing
        kind = self.kinds.get(spec.kind)
        if kind is None:
            known = ", ".join(sorted(self.kinds))
            raise invalid("UNKNOWN_KIND", f"unknown job kind {spec.kind!r}; known kinds: {known}")
        _check_spec(spec)
        if spec.webhook_url:
            self._config.check_webhook(spec.webhook_url)
        self._check_quorum(spec)
        params = decode_params(spec.params)
        return Draft(account, spec, kind, params, self._inputs(account, spec.inputs))

    def check_same(self, spec: JobSpec, first: JobSpec, job: str) -> None:
        """Refuses a submit whose idempotency key names `job` (in words), of another spec."""
        differ = spec_differences(first, spec, self._config.default_max_attempts)
        if differ:
            raise CoordinatorError(
                ErrorKind.EXISTS,
                "IDEMPOTENCY_KEY_REUSED",
                f"idempotency key {spec.idempotency_key!r} was used for {job}, whose "
                f"{'; '.join(differ)}: submit with a new key, or resend the same spec",
            )

    def plan(self, draft: "Draft") -> "Planned":
        """Splits a draft into tasks and prices it. Reads only the draft and the input
        files, never the store, so it may run on another thread."""
        spec, account = draft.spec, draft.account
        plans = draft.kind.plan(draft.params, draft.inputs, self._blobs)
        price = self.price(spec.kind)
        job = Job(
            id=uuid.uuid4().hex,
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
            priority=spec.priority,
            webhook_url=spec.webhook_url,
            keep_logs=spec.keep_logs,
        )
        work = cost = 0
        for p in plans:
            work, cost = work + p.work, cost + job.task_cost(p.work)
        check_job_work(draft.kind, work)  # a task's work is a BIGINT
        job.cost_held = cost * job.max_paid_results
        _check_hold(job)
        return Planned(account, job, plans)

    def affordable(self, planned: "Planned") -> None:
        """Refuses a job its account cannot pay for now, before any task row is written."""
        account, job = planned.account, planned.job
        balance = self._store.balance(client_account(account.name))
        if job.cost_held > balance:
            raise _short(account, job, balance)

    def commit(self, planned: "Planned", tasks: list[Task]) -> Job:
        """Records a planned job and its tasks, holds its cost in escrow and queues it, all
        in one transaction."""
        account, job = planned.account, planned.job
        self.affordable(planned)
        try:
            with self._store.transaction():
                self._store.create_job(job, tasks)
                self._ledger.hold(job, account.name)
                self._submitted(job, account)
        except InsufficientFunds as exc:  # spent meanwhile by a concurrent submit
            raise _short(account, job, exc.balance) from None
        except Conflict:  # the same submit raced another coordinator: return the winner
            existing = self._store.find_job(account.id, job.idempotency_key)
            if existing is None:
                raise
            self.check_same(spec_of(job), spec_of(existing), f"job {existing.id}")
            return existing
        self._scheduler.add_job(job, account.name, tasks)
        self._scheduler.dispatch()
        return job

    # A large job is written in steps, so the coordinator serves others meanwhile: the job
    # row first, hidden (SUBMITTING), then its tasks a slice at a time, then `publish`
    # holds its cost and shows it, in one transaction. No client sees it before that.

    def begin(self, planned: "Planned") -> None:
        """Writes a large job's row, hidden, with no tasks yet."""
        self.affordable(planned)
        job = planned.job
        job.state = JobState.SUBMITTING
        try:
            self._store.create_job(job, [])
        except Conflict:
            raise CoordinatorError(
                ErrorKind.ABORTED,
                "SUBMIT_IN_PROGRESS",
                f"a submit with idempotency key {job.idempotency_key!r} is being written "
                "elsewhere; retry in a moment",
            ) from None

    def publish(self, planned: "Planned") -> Job:
        """Holds a written job's cost in escrow and queues it: the moment it exists."""
        account, job = planned.account, planned.job
        try:
            with self._store.transaction():
                self._ledger.hold(job, account.name)
                move_job(job, JobState.QUEUED)
                self._store.update_job(job)
                self._submitted(job, account)
        except InsufficientFunds as exc:
            job.state = JobState.SUBMITTING
            raise _short(account, job, exc.balance) from None
        # its tasks stay in the store until a dispatch takes them (taskqueue.py)
        self._scheduler.add_job(job, account.name, [], unread=[range(job.task_count)])
        self._scheduler.dispatch()
        return job

    def discard(self, job_id: str, start: int, stop: int) -> None:
        """Deletes tasks [start, stop) of a hidden job whose submit did not complete, and
        the job's row once `stop` reaches its end."""
        job = self._store.get_job(job_id)
        if job is None or job.state != JobState.SUBMITTING:
            return
        self._store.delete_tasks(job_id, start, stop)
        if stop >= job.task_count:
            self._store.delete_job(job_id)

    def discard_unfinished(self) -> int:
        """Deletes every hidden job a stopped coordinator left half-written (at start,
        before serving); returns how many."""
        left = self._store.list_jobs(states=[JobState.SUBMITTING], limit=10**9)
        for job in left:
            with self._store.transaction():
                self.discard(job.id, 0, job.task_count)
        return len(left)

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

    @property
    def remote_blobs(self) -> bool:
        """Whether a look at a blob is a request to a bucket: `look_up_inputs` first."""
        return self._blobs.remote

    def look_up_inputs(self, inputs: dict[str, str]) -> None:
        """Asks the blob store for the inputs' sizes ahead of `prepare`; a bucket's store
        keeps them (blobs_s3.py), so `prepare`, on the event loop, then sends no request.
        Run it in a worker thread."""
        for digest in list(inputs.values())[:INPUTS_LOOKED_UP]:
            if is_digest(digest):
                self._blobs.size(digest)

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
        if job is None or job.account_id != account.id or job.state == JobState.SUBMITTING:
            raise not_found("JOB_NOT_FOUND", f"no job {job_id!r} in account {account.name!r}")
        return job

    def list_jobs(self, account: Account, limit: int) -> list[Job]:
        return self._store.list_jobs(
            account.id, states=VISIBLE_JOB_STATES, limit=min(max(limit, 1), 1000)
        )

    def counts(self, job: Job) -> dict[TaskState, int]:
        """Its tasks per state: from memory while it runs, from its row once it ended."""
        active = self._scheduler.jobs.get(job.id)
        if active is not None:
            return active.counts()
        if job.tasks_succeeded >= 0:
            counts = dict.fromkeys(TaskState, 0)
            counts[TaskState.SUCCEEDED], counts[TaskState.FAILED] = (
                job.tasks_succeeded,
                job.tasks_failed,
            )
            counts[TaskState.CANCELLED] = job.task_count - job.tasks_succeeded - job.tasks_failed
            return counts
        counts = self._store.task_counts(job.id)  # a job that ended before they were kept
        counts[TaskState.CANCELLED] += counts[TaskState.QUEUED]
        counts[TaskState.QUEUED] = 0
        return counts

    def waiting(self, job_id: str) -> str:
        """Why a running job's queued tasks cannot run now; "" once it is final."""
        active = self._scheduler.jobs.get(job_id)
        if active is None:
            return ""
        reason = self._scheduler.waiting(active)
        if not reason and active.queue:  # shown, but not a reason to give up on the job
            reason = self._scheduler.capped(active.owner)
        return reason

    def unmet(self, spec: JobSpec) -> str:
        """Why a job not submitted yet (an estimate) could run on no node connected now;
        "" when some device meets its requirements."""
        return self._scheduler.unmet(spec)

    def cancel(self, account: Account, job_id: str) -> Job:
        job = self.get(account, job_id)
        active = self._scheduler.jobs.get(job.id)
        if active is not None:
            self._scheduler.finish(active, JobState.CANCELLED, "cancelled by the client")
        return self.get(account, job_id)

    def list_all(
        self, account: Account | None, states: list[JobState] | None, limit: int
    ) -> list[Job]:
        """For operators: jobs of every account (or one), newest first."""
        wanted: list[JobState] = [
            s for s in states or VISIBLE_JOB_STATES if s != JobState.SUBMITTING
        ]
        return self._store.list_jobs(
            account.id if account is not None else None, wanted, min(max(limit, 1), 10_000)
        )

    def get_any(self, job_id: str) -> Job:
        job = self._store.get_job(job_id) if job_id else None
        if job is None or job.state == JobState.SUBMITTING:
            raise not_found(
                "JOB_NOT_FOUND", f"no job {job_id!r}; `sparegrid admin jobs list` lists them"
            )
        return job

    def cancel_any(self, job_id: str, reason: str) -> Job:
        """For operators: cancels any account's job; its unspent escrow goes back to it."""
        job = self.get_any(job_id)
        active = self._scheduler.jobs.get(job.id)
        if active is None:
            raise CoordinatorError(
                ErrorKind.PRECONDITION,
                "JOB_FINISHED",
                f"job {job_id} is {job.state.value} already; nothing to cancel",
            )
        self._scheduler.finish(active, JobState.CANCELLED, reason)
        return self.get_any(job_id)

    def logs(
        self, account: Account, job_id: str, task_index: int | None, offset: int, limit: int
    ) -> list[AttemptLog]:
        """A page of the logs of the account's job (or of one of its tasks)."""
        job = self.get(account, job_id)
        if task_index is not None and not 0 <= task_index < job.task_count:
            raise invalid(
                "BAD_TASK", f"job {job_id} has tasks 0 to {job.task_count - 1}, not {task_index}"
            )
        return self._store.task_logs(job.id, task_index, offset, limit)

    def results(self, account: Account, job_id: str, after: int, limit: int) -> list[Task]:
        job = self.get(account, job_id)
        tasks = self._store.list_tasks(job_id, after_index=after, limit=limit)
        if job.state in FINAL_JOB_STATES and job.id not in self._scheduler.jobs:
            for task in tasks:  # not swept yet: it will never run (see counts)
                if task.state == TaskState.QUEUED:
                    task.state = TaskState.CANCELLED
        return tasks


def _check_hold(job: Job) -> None:
    """Refuses a job whose escrow would pass what any account holds: its row keeps the
    hold as a BIGINT, and an estimate sends it as an int64 (INTERNAL, past it)."""
    if job.cost_held > MAX_BALANCE:
        raise invalid(
            "BAD_PARAMS",
            f"{job.kind} job: it would hold {job.cost_held} credit in escrow (up to "
            f"{job.max_paid_results} paid results per task at {job.price_credit}/"
            f"{job.price_units} credit per work unit), past {MAX_BALANCE} (2^63 - 1), the "
            "most the ledger holds: split it into smaller jobs",
        )


def _short(account: Account, job: Job, balance: int) -> CoordinatorError:
    paid = job.max_paid_results
    return CoordinatorError(
        ErrorKind.PRECONDITION,
        "INSUFFICIENT_CREDIT",
        f"job costs up to {job.cost_held} credit ({job.task_count} "
        f"task{'' if job.task_count == 1 else 's'}, up to {paid} "
        f"paid results each under the {policy_text(job)} policy), "
        f"account {account.name!r} holds {balance}",
    )


def _check_spec(spec: JobSpec) -> None:
    if len(spec.name) > 200:
        raise invalid("BAD_NAME", "job name is longer than 200 characters")
    if not 0 <= spec.max_attempts <= MAX_ATTEMPTS:
        raise invalid("BAD_ATTEMPTS", f"max_attempts must be 0 (default) to {MAX_ATTEMPTS}")
    if not -MAX_PRIORITY <= spec.priority <= MAX_PRIORITY:
        raise invalid(
            "BAD_PRIORITY",
            f"priority must be -{MAX_PRIORITY} to {MAX_PRIORITY}, got {spec.priority}",
        )
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
