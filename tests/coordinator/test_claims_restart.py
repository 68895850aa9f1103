"""What a task's failures counted for survives a coordinator restart, or a standby taking
over the database: an owner's failure called final still waits for one more owner's (and
one more is enough), an owner kept off a task stays off it, a vetted owner's timeout
before the restart is still paid with another owner's after it, once, with the client
charged as if nothing had restarted, and a task that ran out of memory on a device goes
to a larger one only. On the memory store, SQLite and PostgreSQL, each
restart a new coordinator over the database opened afresh."""

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from sparegrid.coordinator.app import App
from sparegrid.coordinator.clock import FakeClock
from sparegrid.coordinator.domain import Account, Device, JobState, TaskState, client_account
from sparegrid.coordinator.services.canaries import CanaryConfig
from sparegrid.coordinator.services.jobspec import JobSpec
from sparegrid.coordinator.services.results import Failure
from sparegrid.coordinator.settings import Settings
from sparegrid.coordinator.store.base import Store
from sparegrid.coordinator.store.memory import MemoryStore
from tests.coordinator.conftest import drop_schema, open_backend, store_kinds
from tests.coordinator.helpers import NO_CHECKS, FakeNode

HOUR = 3600.0  # the coordinator's default --max-attempt-seconds: a timeout after it is paid
PRICE = 1  # an echo task's
GIB = 1 << 30


class Coordinators:
    """One coordinator after another over one database, as restarts and takeovers leave
    them: each next one opens the database afresh (the memory store: the same object)
    and loads what it keeps from it; the clock runs on."""

    def __init__(self, kind: str, tmp_path: Path) -> None:
        self.kind, self.tmp_path = kind, tmp_path
        self.schema = f"t_{uuid.uuid4().hex}"
        self.clock = FakeClock()
        self.memory = MemoryStore()
        self.stores: list[Store] = []
        self.app = self._start()

    def _start(self) -> App:
        if self.kind == "memory":
            store: Store = self.memory
        else:
            store = open_backend(self.kind, self.tmp_path, self.schema)
            self.stores.append(store)
        settings = Settings(
            data_dir=self.tmp_path, trust=NO_CHECKS, canaries=CanaryConfig(rate=0.0)
        )
        app = App(store, settings, clock=self.clock)
        app.start_services()
        return app

    def restart(self, *nodes: FakeNode) -> App:
        """A new coordinator takes over; `nodes` connect to it, with no credit."""
        if self.stores:
            self.stores.pop().close()
        self.app = self._start()
        for node in nodes:
            node.app = self.app
            node.connect(credit=0)
        return self.app

    def close(self) -> None:
        for store in self.stores:
            store.close()
        if self.kind == "postgres":
            drop_schema(self.schema)


@pytest.fixture(params=["memory", *store_kinds()])
def coordinators(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Coordinators]:
    made = Coordinators(request.param, tmp_path)
    try:
        yield made
    finally:
        made.close()


def submit(app: App, max_attempts: int) -> tuple[Account, str]:
    alice, _ = app.accounts.create("alice", 100)
    spec = JobSpec(kind="echo", params=b'{"tasks": 1}', max_attempts=max_attempts)
    return alice, app.jobs.submit(alice, spec).id


def take(node: FakeNode) -> str:
    """The node asks for a task; the id of the attempt it gets."""
    node.app.scheduler.grant(node.id, 0, 1)
    node.app.scheduler.dispatch()
    [(attempt, _, _)] = node.sink.take()
    return attempt.id


def fail(node: FakeNode, attempt_id: str, code: str, retryable: bool) -> None:
    failure = Failure(attempt_id, code, f"{code} here", retryable)
    [verdict] = node.app.intake.failures(node.id, [failure])
    assert verdict.accepted


def state(app: App, job_id: str) -> JobState:
    job = app.store.get_job(job_id)
    assert job is not None
    return job.state


def test_a_failure_called_final_before_a_restart_still_waits_for_one_more_owner(
    coordinators: Coordinators,
) -> None:
    """Owner A's node calls the input bad, a restart; another node of A's says so again,
    which does not end the task (one owner's word), a restart; owner B's node says so
    too: two owners, and the task and its job fail, as they would have without the
    restarts (where the restarts forgot A's claim, B's was the first again, and the task
    ran on for yet another owner to confirm)."""
    app = coordinators.app
    a1, a2 = FakeNode(app, "a1", owner="owner-a"), FakeNode(app, "a2", owner="owner-a")
    b = FakeNode(app, "b", owner="owner-b")
    b.connect(credit=0)  # a node of another owner could run it: one claim does not end it
    _, job_id = submit(app, max_attempts=5)
    a1.connect(credit=0)
    fail(a1, take(a1), "BAD_INPUT", retryable=False)
    assert state(app, job_id) == JobState.RUNNING
    app = coordinators.restart(b, a2)
    fail(a2, take(a2), "BAD_INPUT", retryable=False)
    assert state(app, job_id) == JobState.RUNNING  # still owner A's word alone
    app = coordinators.restart(b, a1)  # a node of A's is online, yet A has had its say
    fail(b, take(b), "BAD_INPUT", retryable=False)
    assert state(app, job_id) == JobState.FAILED
    job = app.store.get_job(job_id)
    assert job is not None and "BAD_INPUT" in job.error
    assert app.ledger.check().balanced


@pytest.mark.parametrize("how", ["preempted", "failed every attempt"])
def test_an_owner_kept_off_a_task_stays_off_it_after_a_restart(
    coordinators: Coordinators, how: str
) -> None:
    """Owner A's node hands the task back (PREEMPTED), or fails it until its attempts run
    out, while owner B's node could run it: no node of A's gets that task again, after a
    restart too (it got it straight back, to hand back or fail again, and so hold the
    task for ever); B's node runs it, and the job succeeds."""
    app = coordinators.app
    a1, a2 = FakeNode(app, "a1", owner="owner-a"), FakeNode(app, "a2", owner="owner-a")
    b = FakeNode(app, "b", owner="owner-b")
    b.connect(credit=0)
    _, job_id = submit(app, max_attempts=2)
    a1.connect(credit=0)
    if how == "preempted":
        fail(a1, take(a1), "PREEMPTED", retryable=True)
    else:
        for _ in range(2):
            fail(a1, take(a1), "EXECUTOR_ERROR", retryable=True)
    assert state(app, job_id) == JobState.RUNNING
    app = coordinators.restart()
    a2.app = app
    a2.connect(credit=5)
    assert a2.sink.take() == []  # kept off it still
    b.app = app
    b.connect(credit=1)
    [(attempt, task, kind)] = b.sink.take()
    assert b.answer([(attempt, task, kind)])[0].accepted
    assert state(app, job_id) == JobState.SUCCEEDED
    assert app.ledger.check().balanced


def test_a_timeout_before_a_restart_is_paid_with_another_owners_after_it_once(
    coordinators: Coordinators,
) -> None:
    """bob's node times out after an hour, a restart, carol's times out too: the task fails
    for good, two vetted owners agreed it was its own fault, and alice pays both (without
    the restart's forgetting bob's, she paid nothing and neither volunteer was paid).
    A failure sent again, and a restart after, pay nothing more; a retry of the job starts
    afresh: the first run's failures neither count towards nor pay for the second's."""
    app, clock = coordinators.app, coordinators.clock
    bob, carol = FakeNode(app, "bob", owner="bob"), FakeNode(app, "carol", owner="carol")
    carol.connect(credit=0)
    alice, job_id = submit(app, max_attempts=2)
    bob.connect(credit=0)
    first = take(bob)
    clock.advance(HOUR)
    fail(bob, first, "TIMEOUT", retryable=True)
    assert state(app, job_id) == JobState.RUNNING
    app = coordinators.restart(bob, carol)
    second = take(carol)
    clock.advance(HOUR)
    fail(carol, second, "TIMEOUT", retryable=True)
    assert state(app, job_id) == JobState.FAILED
    paid = {f"node:{bob.id}": PRICE, f"node:{carol.id}": PRICE}

    def charged(runs: int) -> None:
        """What `runs` runs of the job that fail so cost alice, and paid the nodes."""
        job = app.store.get_job(job_id)
        assert job is not None and job.cost_spent == runs * 2 * PRICE
        assert app.store.balances("node:") == {k: runs * v for k, v in paid.items()}
        assert app.store.balance(client_account("alice")) == 100 - runs * 2 * PRICE
        assert app.ledger.check().balanced, app.ledger.check().problems

    charged(1)
    fail(bob, first, "TIMEOUT", retryable=True)  # sent again: nothing more
    app = coordinators.restart(bob, carol)
    charged(1)
    app.retries.retry(alice, job_id)
    third = take(bob)
    clock.advance(HOUR)
    fail(bob, third, "TIMEOUT", retryable=True)
    app = coordinators.restart(bob, carol)
    fourth = take(carol)
    clock.advance(HOUR)
    fail(carol, fourth, "TIMEOUT", retryable=True)
    assert state(app, job_id) == JobState.FAILED
    charged(2)


def gpu(gib: int) -> Device:
    return Device(index=0, kind="cuda", name=f"{gib} GiB GPU", memory_bytes=gib * GIB)


def run(node: FakeNode) -> None:
    """The node asks for a task, gets it, and returns its result."""
    node.app.scheduler.grant(node.id, 0, 1)
    node.app.scheduler.dispatch()
    [(attempt, task, kind)] = node.sink.take()
    assert node.answer([(attempt, task, kind)])[0].accepted


def out_of_memory_on_8_gib(app: App, max_attempts: int) -> tuple[FakeNode, FakeNode, Account, str]:
    """A 24 GiB node of owner-b connected, a job of one task that then runs out of memory on
    an 8 GiB node of owner-a: the two nodes, the job's client and the job's id."""
    small = FakeNode(app, "small", device=gpu(8), owner="owner-a")
    big = FakeNode(app, "big", device=gpu(24), owner="owner-b")
    big.connect(credit=0)
    client, job_id = submit(app, max_attempts=max_attempts)
    small.connect(credit=0)
    fail(small, take(small), "CUDA_OOM", retryable=True)
    return small, big, client, job_id


def test_a_task_out_of_memory_before_a_restart_goes_to_a_larger_device_only_after_it(
    coordinators: Coordinators,
) -> None:
    """A task runs out of memory on an 8 GiB GPU while a 24 GiB one is connected, a
    restart: the 8 GiB node reconnects first and is not given the task again (it was,
    to run out of memory again, until its attempts ran out and failed the job), nor is
    another 8 GiB node; the task waits, its job running, not failed for want of a
    larger device that has not reconnected yet; the 24 GiB node reconnects and runs
    it, and the job succeeds."""
    app = coordinators.app
    small, big, _, job_id = out_of_memory_on_8_gib(app, max_attempts=3)
    same = FakeNode(app, "same", device=gpu(8), owner="owner-c")
    assert state(app, job_id) == JobState.RUNNING
    app = coordinators.restart()
    for node in (small, same):
        node.app = app
        node.connect(credit=5)
        assert node.sink.take() == []  # 8 GiB was not enough
    [task] = app.store.list_tasks(job_id)
    assert task.state == TaskState.QUEUED and state(app, job_id) == JobState.RUNNING
    big.app = app
    big.connect(credit=0)
    run(big)
    assert state(app, job_id) == JobState.SUCCEEDED
    assert app.ledger.check().balanced


def test_out_of_memory_on_the_largest_device_after_a_restart_forgets_the_need_for_good(
    coordinators: Coordinators,
) -> None:
    """The task runs out of memory on an 8 GiB GPU, a restart; then on the 24 GiB one,
    with no larger device connected: as without the restart, the attempt says so, the
    task is not failed on one owner's word while another owner's node could run it, and
    the need for more memory is forgotten: after another restart the 8 GiB node gets the
    task again, and runs it."""
    app = coordinators.app
    small, big, _, job_id = out_of_memory_on_8_gib(app, max_attempts=5)
    app = coordinators.restart(small, big)
    attempt_id = take(big)
    fail(big, attempt_id, "CUDA_OOM", retryable=True)
    [attempt] = app.store.get_attempts([attempt_id])
    assert "no connected device has more than 24.0 GiB" in attempt.error
    assert state(app, job_id) == JobState.RUNNING
    app = coordinators.restart(small, big)
    run(small)
    assert state(app, job_id) == JobState.SUCCEEDED
    assert app.ledger.check().balanced


def test_a_retried_job_forgets_that_its_task_ran_out_of_memory(
    coordinators: Coordinators,
) -> None:
    """The task runs out of memory on an 8 GiB GPU, its client cancels the job and
    retries it, a restart: the retry runs its tasks afresh, and the 8 GiB node gets the
    task again (the client may have made it smaller)."""
    app = coordinators.app
    small, _, alice, job_id = out_of_memory_on_8_gib(app, max_attempts=3)
    app.jobs.cancel(alice, job_id)
    app.retries.retry(alice, job_id)
    app = coordinators.restart(small)
    run(small)
    assert state(app, job_id) == JobState.SUCCEEDED
