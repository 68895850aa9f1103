"""A group commit that loses the database pauses the coordinator: calls are refused with
UNAVAILABLE naming the database, health listeners hear NOT_SERVING, and it reconnects
with backoff, reloads, and serves again. (tests/e2e/test_database_loss.py does it on a
real PostgreSQL with real processes.)"""

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from sparegrid.coordinator.app import App
from sparegrid.coordinator.clock import FakeClock
from sparegrid.coordinator.errors import CoordinatorError, ErrorKind
from sparegrid.coordinator.services.jobs import JobSpec
from sparegrid.coordinator.settings import Settings
from sparegrid.coordinator.store.base import StoreUnavailable
from sparegrid.coordinator.store.memory import MemoryStore
from sparegrid.coordinator.web.serve import readiness
from tests.coordinator.commits import connected

LOST = "lost the PostgreSQL database sparegrid on db.example:5432: server closed the connection"


def fail_commits(store: MemoryStore, down: dict[str, int]) -> None:
    """The store's next `down["commits"]` outermost transactions lose the database as they
    commit, whatever they did."""
    real = store.transaction

    @contextmanager
    def flaky(defer_commit: bool = False) -> Iterator[None]:
        outer = store._depth == 0
        with real(defer_commit):
            yield
            if outer and down["commits"]:
                down["commits"] -= 1
                raise StoreUnavailable(LOST)

    store.transaction = flaky  # type: ignore[method-assign]


async def test_a_lost_database_pauses_and_the_coordinator_recovers(tmp_path: Path) -> None:
    store = MemoryStore()
    app = App(store, Settings(data_dir=tmp_path), clock=FakeClock())
    app.scheduler.load()
    alice, _ = app.accounts.create("alice", 100)
    sink = connected(app)
    heard: list[bool] = []
    app.serving_changed.append(heard.append)
    down = {"commits": 1, "reconnects": 2}  # the commit fails, then two reconnects do
    fail_commits(store, down)

    def reconnect() -> None:
        if down["reconnects"]:
            down["reconnects"] -= 1
            raise StoreUnavailable("cannot reach the PostgreSQL database sparegrid")

    store.reconnect = reconnect  # type: ignore[method-assign]
    spec = JobSpec(kind="echo", params=b'{"tasks": 3}')
    with pytest.raises(CoordinatorError) as err:
        await app.call(lambda: app.jobs.submit(alice, spec))
    assert err.value.kind == ErrorKind.UNAVAILABLE and err.value.code == "STORE_UNAVAILABLE"
    assert "lost the PostgreSQL database sparegrid" in err.value.message
    assert not app.serving and heard == [False]
    assert readiness(app)() == (False, "lost the database: calls are refused until it is back")
    assert "sparegrid_database_up 0.0" in generate_latest(app.metrics.registry).decode()
    assert sink.queue.qsize() == 1  # the session was closed: no lease went out
    assert app.scheduler.sessions == {}  # workers reconnect and resume their leases
    with pytest.raises(CoordinatorError) as refused:  # refused at once, nothing run
        await app.call(lambda: pytest.fail("ran while the database was lost"))
    assert refused.value.kind == ErrorKind.UNAVAILABLE
    for _ in range(200):
        if app.serving:
            break
        await asyncio.sleep(0.05)
    assert app.serving and heard == [False, True] and down["reconnects"] == 0
    assert readiness(app)() == (True, "serving from the database")  # /ready says 200 again
    assert "sparegrid_database_up 1.0" in generate_latest(app.metrics.registry).decode()
    assert store.list_jobs() == [] and store.balance("client:alice") == 100
    app.sinks.discard(sink)
    sink = connected(app)
    job = await app.call(lambda: app.jobs.submit(alice, spec))
    assert store.get_job(job.id) is not None
    assert len(sink.queue.get_nowait().assign.assignments) == 3  # type: ignore[union-attr]
    await app.stop()


async def test_a_lost_database_is_logged_without_tracebacks(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An operator who terminated the coordinator's backend (a documented outage) found two
    tracebacks in its log, the group commit's and the lease reaper's that was in it: now
    each says what failed in a line, beside `lost the database: ...`."""
    store = MemoryStore()
    settings = Settings(data_dir=tmp_path, reap_interval_seconds=0.01)
    app = App(store, settings, clock=FakeClock())
    app.scheduler.load()
    fail_commits(store, {"commits": 1})
    caplog.set_level("INFO")
    reaper = asyncio.create_task(app._reaper())
    for _ in range(200):
        if any("reaping expired leases failed" in r.getMessage() for r in caplog.records):
            break
        await asyncio.sleep(0.01)
    reaper.cancel()
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("lost the database: " + LOST) for m in messages)
    assert "reaping expired leases failed (the database is lost)" in " ".join(messages)
    assert [r.getMessage() for r in caplog.records if r.exc_info] == []
    await app.stop()


async def test_a_standby_that_loses_the_database_while_taking_over_stands_by_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A standby whose connection was terminated just after it took the lock (found with
    pg_terminate_backend on the walk) exited 1, leaving no coordinator standing by; now it
    says so and stands by again, and serves once the database answers."""
    from types import SimpleNamespace

    from sparegrid.coordinator import cli
    from sparegrid.coordinator.store.base import StoreTaken

    settings = Settings(data_dir=tmp_path / "coord")
    tries: list[str] = []
    apps: list[App] = []

    def cut(*args: object) -> None:
        raise StoreUnavailable(LOST)

    def open_app(serving: object) -> tuple[App, MemoryStore]:
        tries.append("try")
        if len(tries) == 1:
            raise StoreTaken("another coordinator is serving from the PostgreSQL database")
        store = MemoryStore()
        if len(tries) == 2:  # taken over, then cut off before the admin account is read
            store.get_account_by_name = cut  # type: ignore[method-assign,assignment]
        if len(tries) == 4:  # cut off while reading the admin key to record
            store.get_account_by_key_hash = cut  # type: ignore[method-assign,assignment]
        app = App(store, settings, clock=FakeClock())
        apps.append(app)
        if len(tries) == 3:  # cut off while loading the queues
            app.start_services = cut  # type: ignore[method-assign]
        return app, store

    monkeypatch.setattr(cli, "open_app", open_app)
    monkeypatch.setattr(cli, "check_standby_key", lambda serving, taken: None)
    monkeypatch.setattr(cli, "STANDBY_POLL_SECONDS", 0.01)
    serving = SimpleNamespace(settings=settings)
    taken = await cli.take_over(serving, asyncio.Event())  # type: ignore[arg-type]
    assert taken is not None and len(tries) == 5
    assert (tmp_path / "coord" / "admin.key").exists()  # made once it could be
    assert caplog.text.count(f"lost the database while taking over ({LOST}); standing by") == 3
    assert taken.admin_key == (tmp_path / "coord" / "admin.key").read_text().strip()
    # the app of the attempt cut off after it started runs nothing: a leftover reaper or
    # recovery would write to a closed store, reconnect, and take the database back
    await asyncio.sleep(0.05)
    left = [t for a in apps if a is not taken.app for t in a._tasks if not t.done()]
    assert left == [] and len(apps) == 4
    await taken.app.stop()
