"""Group commit: many calls, one transaction; a failed commit leaves no trace anywhere."""

import asyncio
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from sparegrid.coordinator.app import App
from sparegrid.coordinator.clock import FakeClock
from sparegrid.coordinator.domain import Account
from sparegrid.coordinator.errors import CoordinatorError, ErrorKind
from sparegrid.coordinator.rpc.worker import QueueSink
from sparegrid.coordinator.services.jobs import JobSpec
from sparegrid.coordinator.settings import Settings
from sparegrid.coordinator.store.memory import MemoryStore
from tests.coordinator.commits import connected
from tests.coordinator.conftest import drop_schema, open_backend, store_kinds


async def test_calls_in_one_loop_turn_share_a_commit(tmp_path: Path) -> None:
    store = MemoryStore()
    app = App(store, Settings(data_dir=tmp_path), clock=FakeClock())
    app.scheduler.load()
    alice, _ = app.accounts.create("alice", 100)
    sink = connected(app)
    commits = 0
    real = store.transaction

    @contextmanager
    def counting(defer_commit: bool = False) -> Iterator[None]:
        nonlocal commits
        outer = store._depth == 0
        with real(defer_commit):
            yield
        commits += outer

    store.transaction = counting  # type: ignore[method-assign]
    spec = JobSpec(kind="echo", params=b'{"tasks": 2}')
    futures = [app.call(lambda: app.jobs.submit(alice, spec)) for _ in range(5)]
    jobs = await asyncio.gather(*futures)
    assert len({j.id for j in jobs}) == 5
    assert commits == 1
    assert sink.queue.qsize() >= 1  # the assignments went out after the commit


async def test_failed_commit_changes_nothing_and_the_next_one_works(tmp_path: Path) -> None:
    store = MemoryStore()
    app = App(store, Settings(data_dir=tmp_path), clock=FakeClock())
    app.scheduler.load()
    alice, _ = app.accounts.create("alice", 100)
    sink = connected(app)
    real = store.transaction
    armed = True

    @contextmanager
    def flaky(defer_commit: bool = False) -> Iterator[None]:
        nonlocal armed
        outer = store._depth == 0
        with real(defer_commit):
            yield
            if outer and armed:
                armed = False
                raise OSError("No space left on device")

    store.transaction = flaky  # type: ignore[method-assign]
    await _fails_then_works(app, alice, sink)


async def _fails_then_works(app: App, alice: Account, sink: QueueSink) -> None:
    """A submit whose commit fails (no space left) changes nothing; the next one works."""
    store = app.store
    spec = JobSpec(kind="echo", params=b'{"tasks": 3}')
    with pytest.raises(CoordinatorError) as err:
        await app.call(lambda: app.jobs.submit(alice, spec))
    assert err.value.kind == ErrorKind.ABORTED and "No space" in err.value.message
    assert store.list_jobs() == [] and app.scheduler.jobs == {}
    assert store.balance("client:alice") == 100
    # no node heard of a lease that never became durable; sessions restart afresh
    assert sink.queue.qsize() == 1 and not hasattr(sink.queue.get_nowait(), "assign")
    app.sinks.discard(sink)
    app.scheduler.sessions.clear()
    sink = connected(app)
    job = await app.call(lambda: app.jobs.submit(alice, spec))
    assert store.get_job(job.id) is not None
    assert sink.queue.qsize() == 1
    assert len(sink.queue.get_nowait().assign.assignments) == 3  # type: ignore[union-attr]


@pytest.fixture(params=store_kinds())
def sql_app(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[App]:
    """An app on SQLite and (when configured) PostgreSQL, whose COMMIT runs on a thread."""
    schema = f"t_{uuid.uuid4().hex}"
    store = open_backend(request.param, tmp_path, schema)
    app = App(store, Settings(data_dir=tmp_path), clock=FakeClock())
    app.scheduler.load()
    yield app
    app._committer.shutdown()
    store.close()
    if request.param == "postgres":
        drop_schema(schema)


def _held_commits(store: Any) -> threading.Event:
    """Holds every COMMIT made on the commit thread (a group's) until the event returned
    is set; a store call's own, on the loop's thread, goes through."""
    release = threading.Event()
    real = store._committing

    def held() -> None:
        if threading.current_thread() is not threading.main_thread():
            release.wait(10)
        real()

    store._committing = held
    return release


async def test_the_loop_runs_on_while_a_commit_syncs_and_nothing_is_told_before_it_ends(
    sql_app: App,
) -> None:
    app, store = sql_app, sql_app.store
    alice, _ = app.accounts.create("alice", 100)
    sink = connected(app)
    release = _held_commits(store)
    spec = JobSpec(kind="echo", params=b'{"tasks": 2}')
    first = app.call(lambda: app.jobs.submit(alice, spec))
    await asyncio.sleep(0.2)  # the loop is free: the group ran, its COMMIT waits
    assert not first.done() and sink.queue.qsize() == 0  # no lease went out yet
    second = app.call(lambda: app.jobs.submit(alice, spec))  # queued for the next group
    read = asyncio.get_running_loop().run_in_executor(None, store.list_jobs)
    await asyncio.sleep(0.2)
    assert not second.done() and not read.done()  # a read waits for the commit
    release.set()
    job = await first
    assert job.id in [j.id for j in await read]  # it read what was committed
    assert (await second).id != job.id
    assert sink.queue.qsize() >= 1  # the leases went out once durable
    assert len(store.list_jobs()) == 2


async def test_a_commit_that_fails_on_its_thread_changes_nothing(sql_app: App) -> None:
    app, store = sql_app, sql_app.store
    alice, _ = app.accounts.create("alice", 100)
    sink = connected(app)
    real = store._committing
    armed = True

    def failing() -> None:
        nonlocal armed
        if armed:
            armed = False
            raise OSError("No space left on device")
        real()

    store._committing = failing  # type: ignore[method-assign]
    await _fails_then_works(app, alice, sink)
