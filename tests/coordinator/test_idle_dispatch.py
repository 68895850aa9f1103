"""Dispatch looks only at what changed: idle sessions cost nothing, work still reaches the
right devices (scheduler on the in-memory store with a fake clock)."""

import json

from sparegrid.coordinator.domain import Device, Requirements, TaskState
from sparegrid.coordinator.services.jobs import JobSpec
from tests.coordinator.helpers import FakeNode, echo, make_app, make_client

GPU = Device(index=0, kind="cuda", name="gpu", memory_bytes=8 << 30, compute_capability="8.6")


def fleet(app, count: int, **kwargs) -> list[FakeNode]:
    nodes = [FakeNode(app, f"n{i}", **kwargs) for i in range(count)]
    for node in nodes:
        node.connect(credit=2)
    return nodes


def test_a_pass_with_nothing_changed_examines_no_session(tmp_path) -> None:
    app = make_app(tmp_path)
    fleet(app, 50)
    scheduler = app.scheduler
    before = scheduler.scanned
    for _ in range(10):
        for node_id in list(scheduler.sessions):
            scheduler.heartbeat(node_id)
        assert scheduler.dispatch() == 0
    assert scheduler.scanned == before  # 10 passes over 50 idle sessions: none examined


def test_new_work_examines_only_sessions_that_can_run_it(tmp_path) -> None:
    app = make_app(tmp_path)
    alice = make_client(app)
    cpus = fleet(app, 30)
    gpus = fleet(app, 5, device=GPU)
    renderers = fleet(app, 7, kinds=("render",))
    scheduler = app.scheduler
    before = scheduler.scanned
    spec = JobSpec(
        kind="echo",
        params=json.dumps({"tasks": 6, "data": "x"}).encode(),
        requirements=Requirements(device_kind="cuda"),
    )
    job = app.jobs.submit(alice, spec)
    # the GPU nodes alone were looked at: not the 30 CPU nodes, not the render nodes
    assert scheduler.scanned - before == len(gpus)
    leased = [a for node in gpus for a, _, _ in node.sink.take()]
    assert len(leased) == 6 and all(a.job_id == job.id for a in leased)
    assert not any(node.sink.take() for node in cpus + renderers)


def test_tasks_put_back_reach_a_waiting_node(tmp_path) -> None:
    app = make_app(tmp_path)
    alice = make_client(app)
    first = FakeNode(app, "first")
    first.connect(credit=1)
    job_id = echo(app, alice, 1)
    ((attempt, _, _),) = first.sink.take()
    second = FakeNode(app, "second")
    second.connect(credit=1)  # waits with credit: nothing is queued
    scanned = app.scheduler.scanned
    app.scheduler.dispatch()
    assert app.scheduler.scanned == scanned  # nothing changed
    app.scheduler.disconnect(first.id, first.sink)
    app.clock.advance(app.settings.reconnect_grace_seconds + 1)
    app.scheduler.reap()  # the first node is gone: its task goes back to the queue
    app.scheduler.dispatch()
    ((again, task, _),) = second.sink.take()
    assert again.task_id == attempt.task_id and again.node_id == second.id
    assert app.store.get_tasks([task.id])[0].state == TaskState.LEASED
    assert app.store.get_job(job_id) is not None


def test_credit_granted_later_is_used_at_once(tmp_path) -> None:
    app = make_app(tmp_path)
    alice = make_client(app)
    node = FakeNode(app, "late")
    node.connect(credit=0)
    echo(app, alice, 3)
    assert node.sink.take() == []
    app.scheduler.grant(node.id, 0, 3)
    app.scheduler.dispatch()
    assert len(node.sink.take()) == 3


def test_a_rescan_finds_a_node_unblocked_without_any_mark(tmp_path) -> None:
    blocked: set[str] = set()
    app = make_app(tmp_path)
    app.scheduler.blocked = lambda node_id: node_id in blocked
    alice = make_client(app)
    node = FakeNode(app, "quarantined")
    blocked.add(node.id)
    node.connect(credit=2)
    echo(app, alice, 2)
    assert node.sink.take() == []
    blocked.clear()  # let go: nothing about its credit or the queue changed
    app.scheduler.dispatch()
    assert node.sink.take() == []
    app.scheduler.rescan()  # what the reaper asks for each tick while tasks wait
    app.scheduler.dispatch()
    assert len(node.sink.take()) == 2
