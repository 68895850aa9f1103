"""Group commit: many calls, one transaction; a failed commit leaves no trace anywhere."""

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from sparegrid.coordinator.app import App
from sparegrid.coordinator.clock import FakeClock
from sparegrid.coordinator.errors import CoordinatorError, ErrorKind
from sparegrid.coordinator.services.jobs import JobSpec
from sparegrid.coordinator.settings import Settings
from sparegrid.coordinator.store.memory import MemoryStore
from tests.coordinator.commits import connected


async def test_calls_in_one_loop_turn_share_a_commit(tmp_path: Path) -> None:
    store = MemoryStore()
    app = App(store, Settings(data_dir=tmp_path), clock=FakeClock())
    app.scheduler.load()
    alice, _ = app.accounts.create("alice", 100)
    sink = connected(app)
    commits = 0
    real = store.transaction

    @contextmanager
    def counting() -> Iterator[None]:
        nonlocal commits
        outer = store._depth == 0
        with real():
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
    def flaky() -> Iterator[None]:
        nonlocal armed
        outer = store._depth == 0
        with real():
            yield
            if outer and armed:
                armed = False
                raise OSError("No space left on device")

    store.transaction = flaky  # type: ignore[method-assign]
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
