"""The settlement model's parts that need no model: a worker as it plays one, and the
checks that memory and the store agree on a job, its payments and its clients' credit
(test_settlement_model.py)."""

from collections import Counter
from dataclasses import dataclass, field

from sparegrid.coordinator.app import App
from sparegrid.coordinator.domain import (
    Account,
    Attempt,
    AttemptState,
    JobState,
    ReplicaState,
    Task,
    TaskState,
    client_account,
    escrow_account,
)
from sparegrid.coordinator.services.ledger import Payment
from sparegrid.coordinator.services.scheduler import TASK_FAULTS, ActiveJob
from sparegrid.coordinator.services.taskqueue import TaskQueue
from sparegrid.coordinator.states import FINAL_JOB_STATES, FINAL_TASK_STATES
from sparegrid.coordinator.store.base import Store
from tests.coordinator.helpers import FakeNode, FakeSink

Item = tuple[Attempt, Task, str]


@dataclass
class Worker:
    """A worker as the model plays it: what it holds and what it sent."""

    fake: FakeNode
    honest: bool
    held: dict[str, Item] = field(default_factory=dict)  # assignments not answered yet
    sent: list[tuple[Item, bytes]] = field(default_factory=list)
    cancelled: set[str] = field(default_factory=set)  # attempts the coordinator cancelled
    sinks: list[FakeSink] = field(default_factory=list)

    @property
    def id(self) -> str:
        return self.fake.id


def queued_ids(active: ActiveJob) -> set[str]:
    """Every task id in a job's queue, the unread ranges of a large or retried job too."""
    queue: TaskQueue = active.queue
    found = {t.id for t in queue.materialised()}
    for item in queue._order:
        if isinstance(item, range):
            found.update(f"{active.job.id}-{i}" for i in item)
    return found


def describe(app: App, active: ActiveJob) -> str:
    """A job still open, for a failure's message."""
    job = active.job
    replicas = {
        t: [(r.node_id[:6], r.owner, r.state.value) for r in rs]
        for t, rs in active.replicas.items()
    }
    return (
        f"job {job.id} ({job.replicas}/{job.quorum}, owner {active.owner}, max_attempts "
        f"{job.max_attempts}): {job.state}, queued {sorted(queued_ids(active))}, held "
        f"{sorted(active.held)}, running {sorted(active.running)}, replicas {replicas}, "
        f"excluded {active.excluded}, node failures {dict(active.node_failures)}, "
        f"waiting {app.scheduler.waiting(active)!r}, vouching {app.intake.settlement.vouching.held}"
        f" picks {list(app.intake.settlement.vouching.picks)}"
    )


def check_job(app: App, job_id: str, running: dict[str, Attempt]) -> None:
    """A job's state, counts, queue, held and running tasks, memory's and the store's."""
    store, sched = app.store, app.scheduler
    job = store.get_job(job_id)
    assert job is not None
    tasks = store.list_tasks(job_id, limit=10**6)
    states = Counter(t.state for t in tasks)
    active = sched.jobs.get(job_id)
    if job.state == JobState.SUCCEEDED:
        assert states[TaskState.SUCCEEDED] == len(tasks), f"job {job_id} succeeded: {states}"
    if job.state in FINAL_JOB_STATES:
        assert active is None
        sweep = sched.sweeps.get(job_id)  # its queued tasks cancelled a slice at a time
        unswept = [t for t in tasks if sweep is not None and t.index >= sweep.start]
        final = [t for t in tasks if t not in unswept]
        assert all(t.state in FINAL_TASK_STATES for t in final), f"ended job {job_id}: {states}"
        assert (job.tasks_succeeded, job.tasks_failed) == (
            states[TaskState.SUCCEEDED],
            states[TaskState.FAILED],
        ), f"job {job_id} counts {job.tasks_succeeded}/{job.tasks_failed}, tasks {states}"
        return
    assert active is not None, f"job {job_id} is {job.state} but not scheduled"
    counts = active.counts()
    for state in TaskState:
        assert counts[state] == states[state], f"job {job_id}: memory {counts}, store {states}"
    queued = queued_ids(active)
    held = set(active.held)
    leased = set(active.running)
    assert not queued & held, f"tasks both queued and held: {queued & held}"
    assert not queued & leased, f"tasks both queued and leased: {queued & leased}"
    assert not held & leased, f"tasks both held and leased: {held & leased}"
    by_state = {s: {t.id for t in tasks if t.state == s} for s in TaskState}
    assert queued | held == by_state[TaskState.QUEUED], (
        f"job {job_id}: queue {queued}, held {held}, QUEUED in the store "
        f"{by_state[TaskState.QUEUED]}"
    )
    assert leased == by_state[TaskState.LEASED]
    for task_id, attempt in active.running.items():
        assert attempt.id in running, f"attempt {attempt.id} of {task_id} not running"
        assert attempt == running[attempt.id], (attempt, running[attempt.id])
    stored = {t.id: t for t in tasks}
    for task in [*active.queue.materialised(), *active.held.values()]:
        mine = (task.state, task.attempts)
        assert mine == (stored[task.id].state, stored[task.id].attempts), (
            task,
            stored[task.id],
        )


def check_payments(store: Store, paid: list[Payment]) -> None:
    """No attempt paid twice; each paid for a result of a task accepted, and valid, or
    for a failure that was the task's own, which a node of another owner's failed too."""
    attempts = Counter(p.attempt_id for p in paid)
    twice = [a for a, n in attempts.items() if n > 1]
    assert not twice, f"attempts paid twice: {twice}"
    tasks = {t.id: t for t in store.get_tasks(sorted({p.task_id for p in paid}))}
    stored = {a.id: a for a in store.get_attempts(sorted(attempts))}
    replicas = {r.attempt_id: r for r in store.get_replicas(sorted(tasks))}
    faults = [p for p in paid if stored[p.attempt_id].state == AttemptState.FAILED]
    results = [p for p in paid if stored[p.attempt_id].state != AttemptState.FAILED]
    for p in faults:
        assert stored[p.attempt_id].error_code in TASK_FAULTS, stored[p.attempt_id]
        agreed = [f for f in faults if f.task_id == p.task_id and f.node_id != p.node_id]
        assert agreed, f"a failure paid that no other node's agreed with: {p}"
    for p in results:
        assert tasks[p.task_id].state == TaskState.SUCCEEDED, f"paid for {p.task_id}: {p}"
        assert stored[p.attempt_id].state == AttemptState.SUCCEEDED, stored[p.attempt_id]
        assert replicas[p.attempt_id].state == ReplicaState.VALID, replicas[p.attempt_id]


def check_clients(store: Store, accounts: dict[str, Account], granted: int) -> None:
    """What each client was granted is its balance, its jobs' escrow, and what its
    jobs paid."""
    paid = store.payments_by_job()
    for name, account in accounts.items():
        jobs = [j.id for j in store.list_jobs(account.id, limit=10**6)]
        escrow = sum(store.balance(escrow_account(j)) for j in jobs)
        spent = sum(paid.get(j, 0) for j in jobs)
        balance = store.balance(client_account(name))
        assert balance + escrow + spent == granted, (name, balance, escrow, spent)
