"""On PostgreSQL a group commit's dispatch pass leases the tasks memory holds as queued
without waiting for the server's reply. Should the database disagree (a task not queued
there), the statement fails, the whole group with it, and memory is reloaded from the
database: the two never part, and the next pass leases what is really queued."""

import os
import uuid
from pathlib import Path

import pytest

from sparegrid.coordinator.app import App
from sparegrid.coordinator.clock import FakeClock
from sparegrid.coordinator.domain import TaskState
from sparegrid.coordinator.errors import CoordinatorError
from sparegrid.coordinator.services.jobs import JobSpec
from sparegrid.coordinator.settings import Settings
from tests.coordinator.commits import connected
from tests.coordinator.conftest import drop_schema, open_backend

pytestmark = pytest.mark.skipif(
    not os.environ.get("SPAREGRID_TEST_POSTGRES"), reason="needs SPAREGRID_TEST_POSTGRES"
)


async def test_a_lease_the_database_disagrees_with_fails_its_group_and_memory_is_reloaded(
    tmp_path: Path,
) -> None:
    schema = f"t_{uuid.uuid4().hex}"
    store = open_backend("postgres", tmp_path, schema)
    try:
        app = App(store, Settings(data_dir=tmp_path), clock=FakeClock())
        app.start_services()
        alice, _ = app.accounts.create("alice", 100)
        spec = JobSpec(kind="echo", params=b'{"tasks": 2}')
        job = await app.call(lambda: app.jobs.submit(alice, spec))
        with store.transaction():  # behind memory's back: a queued task is cancelled
            store._run(
                "UPDATE tasks SET state = 'cancelled' WHERE job_id = ? AND idx = 0", (job.id,)
            )
        sink = connected(app)  # credit for both tasks: the pass leases both
        with pytest.raises(CoordinatorError, match="not queued in the store"):
            app.kick()
            await app.call(lambda: None)
        assert sink.queue.qsize() == 1  # its session was closed, no lease went out
        assert store.get_attempts([a.id for a in store.running_attempts()]) == []
        for node_id, session in list(app.scheduler.sessions.items()):
            app.scheduler.disconnect(node_id, session.sink)  # its stream ended
        again = connected(app)  # a worker connects: only the task queued is leased
        app.kick()
        await app.call(lambda: None)
        (assign,) = [again.queue.get_nowait() for _ in range(again.queue.qsize())]
        leased = [a.task_id for a in assign.assign.assignments]  # type: ignore[union-attr]
        states = {t.id: t.state for t in store.list_tasks(job.id)}
        assert leased == [t for t, s in states.items() if s == TaskState.LEASED]
        assert sorted(states.values()) == [TaskState.CANCELLED, TaskState.LEASED]
        await app.stop()
    finally:
        drop_schema(schema)
