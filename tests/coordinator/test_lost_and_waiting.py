"""A crash is not a failure: attempts lost with their node are given back, nothing counts
against the node. A job no connected node can run fails after the wait limit, saying why."""

import argparse
from pathlib import Path

import pytest

from sparegrid.coordinator.cli import parse_duration
from sparegrid.coordinator.domain import Device, JobState, Requirements, TaskState
from sparegrid.coordinator.services.jobs import JobSpec
from sparegrid.coordinator.services.waits import duration
from tests.coordinator.helpers import FakeNode, echo, make_app, make_client


def test_a_node_that_restarts_without_its_attempts_is_not_failed(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    alice = make_client(app)
    node = FakeNode(app, "n1")
    node.connect(credit=4)
    job_id = echo(app, alice, 4)
    items = node.sink.take()
    assert len(items) == 4
    for window in (2, 1, 1):  # killed and restarted three times, holding what it had
        node.connect(credit=4, running=[])
        items = node.sink.take()
        # the same node gets them again (nothing excluded it); its window halves, as for
        # any lease that runs out, so a node cannot hoard tasks by restarting
        assert len(items) == window
    active = app.scheduler.jobs[job_id]
    assert active.node_failures[node.id] == 0
    assert {t.attempts for _, t, _ in items} == {1}  # the lost attempts were given back
    while items:
        node.answer(items)
        node.app.scheduler.grant(node.id, 0, 4)
        node.app.scheduler.dispatch()
        items = node.sink.take()
    job = app.store.get_job(job_id)
    assert job is not None and job.state == JobState.SUCCEEDED
    stored = app.store.get_node(node.id)
    assert stored is not None and stored.tasks_failed == 0
    assert app.store.node_failures(job_id) == {}


def test_a_task_lost_more_often_than_its_attempt_limit_counts(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    alice = make_client(app)
    node = FakeNode(app, "n1")
    node.connect(credit=1)
    job_id = app.jobs.submit(alice, JobSpec("echo", params=b'{"tasks": 1}', max_attempts=2)).id
    for _ in range(2):  # lost twice: given back
        assert len(node.sink.take()) == 1
        node.connect(credit=1, running=[])
    assert app.scheduler.jobs[job_id].node_failures[node.id] == 0
    for _ in range(2):  # lost again: counted as expired leases, the task's limit is 2
        assert len(node.sink.take()) == 1
        node.connect(credit=1, running=[])
    job = app.store.get_job(job_id)
    assert job is not None and job.state == JobState.FAILED
    assert "restarted without it" in job.error and "too often" in job.error


def test_a_node_that_went_away_loses_its_leases_without_failing(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    alice = make_client(app)
    node = FakeNode(app, "n1")
    node.connect(credit=2)
    job_id = echo(app, alice, 2)
    assert len(node.sink.take()) == 2
    app.scheduler.disconnect(node.id, node.sink)
    app.clock.advance(app.settings.reconnect_grace_seconds + 1)  # type: ignore[attr-defined]
    app.scheduler.reap()
    active = app.scheduler.jobs[job_id]
    assert len(active.queue) == 2 and active.node_failures[node.id] == 0
    node.connect(credit=2)  # back much later: the tasks are its to run again
    node.answer(node.sink.take())
    job = app.store.get_job(job_id)
    assert job is not None and job.state == JobState.SUCCEEDED


def test_a_connected_node_whose_lease_runs_out_still_fails(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    alice = make_client(app)
    node = FakeNode(app, "n1")
    node.connect(credit=1)
    job_id = echo(app, alice, 1)
    assert len(node.sink.take()) == 1
    app.clock.advance(app.settings.lease_seconds + 1)  # type: ignore[attr-defined]
    app.scheduler.reap()  # no heartbeat renewed it: the node holds it and does nothing
    assert app.scheduler.jobs[job_id].node_failures[node.id] == 1


def test_a_job_no_node_can_run_fails_after_the_wait_limit(tmp_path: Path) -> None:
    app = make_app(tmp_path, wait_limit_seconds=3600.0)
    alice = make_client(app)
    FakeNode(app, "cpu").connect()
    spec = JobSpec("echo", params=b'{"tasks": 3}', requirements=Requirements(device_kind="cuda"))
    job_id = app.jobs.submit(alice, spec).id
    assert app.waits.check() == []  # it begins to wait
    app.clock.advance(3000)  # type: ignore[attr-defined]
    assert app.waits.check() == []
    app.clock.advance(600)  # type: ignore[attr-defined]
    assert app.waits.check() == [job_id]
    job = app.store.get_job(job_id)
    assert job is not None and job.state == JobState.FAILED
    assert job.error == (
        "waited 1h (the coordinator's wait limit): no connected node can run it: "
        "it needs a cuda device"
    )
    assert app.jobs.counts(job)[TaskState.CANCELLED] == 3
    assert app.ledger.check().balanced and app.store.balance("client:alice") == 1000


def test_the_wait_starts_again_when_a_node_could_run_the_job(tmp_path: Path) -> None:
    app = make_app(tmp_path, wait_limit_seconds=100.0)
    alice = make_client(app)
    job_id = echo(app, alice, 2)  # no worker is connected
    app.waits.check()
    app.clock.advance(80)  # type: ignore[attr-defined]
    node = FakeNode(app, "n1")
    node.connect(credit=0)  # it fits, though it takes no task yet
    app.waits.check()
    app.scheduler.disconnect(node.id, node.sink)
    app.clock.advance(30)  # type: ignore[attr-defined]
    assert app.waits.check() == []  # 30 s since it began to wait again, not 110
    app.clock.advance(100)  # type: ignore[attr-defined]
    assert app.waits.check() == [job_id]
    job = app.store.get_job(job_id)
    assert job is not None and job.error.endswith("no worker is connected")


def test_a_running_job_and_a_limit_of_zero_never_fail(tmp_path: Path) -> None:
    app = make_app(tmp_path, wait_limit_seconds=10.0)
    alice = make_client(app)
    gpu = Device(index=0, kind="cuda", name="H200", memory_bytes=1 << 30)
    FakeNode(app, "gpu", device=gpu).connect(credit=1)
    spec = JobSpec("echo", params=b'{"tasks": 3}', requirements=Requirements(device_kind="cuda"))
    running = app.jobs.submit(alice, spec).id  # one task runs; the others wait their turn
    app.waits.check()
    app.clock.advance(60)  # type: ignore[attr-defined]
    assert app.waits.check() == []
    forever = make_app(tmp_path / "2", wait_limit_seconds=0.0)
    waiting = echo(forever, make_client(forever), 1)
    forever.clock.advance(10**6)  # type: ignore[attr-defined]
    assert forever.waits.check() == [] and waiting in forever.scheduler.jobs
    assert running in app.scheduler.jobs


def test_wait_limit_durations() -> None:
    assert [parse_duration(t) for t in ("90", "90s", "30m", "24h", "2d", "0")] == [
        90.0,
        90.0,
        1800.0,
        86400.0,
        172800.0,
        0.0,
    ]
    for bad in ("", "h", "-1h", "1w", "nan", "inf"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_duration(bad)
    assert [duration(s) for s in (86400.0, 3600.0, 5400.0, 2.0, 1.5)] == [
        "1d",
        "1h",
        "90m",
        "2s",
        "1.5s",
    ]
