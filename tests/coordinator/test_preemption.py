"""A task a node's own policy stopped (PREEMPTED) goes back to the queue and is never
held against the node: no attempt used, no failure counted, no exclusion, no pay. The node
then gets no new task for a while, so what it hands back goes to other nodes: a node that
hands back every task at once cannot hoard a job."""

from sparegrid.coordinator.domain import AttemptState, JobState, TaskState
from sparegrid.coordinator.services.jobs import JobSpec
from sparegrid.coordinator.services.results import Failure
from tests.coordinator.helpers import FakeNode, echo, make_app, make_client


def test_preempted_tasks_are_requeued_without_using_an_attempt(tmp_path) -> None:
    app = make_app(tmp_path)
    alice = make_client(app, credit=100)
    gamer, other = FakeNode(app, "gamer"), FakeNode(app, "other")
    spec = JobSpec(kind="echo", params=b'{"tasks": 1, "data": "x"}', max_attempts=1)
    job_id = app.jobs.submit(alice, spec).id
    gamer.connect(credit=1)
    for _ in range(3):  # more preemptions than the job allows attempts
        ((attempt, task, _),) = gamer.sink.take()
        verdicts = app.intake.failures(
            gamer.id, [Failure(attempt.id, "PREEMPTED", "paused: owner active", True)]
        )
        assert verdicts[0].accepted
        stored = app.store.get_attempts([attempt.id])[0]
        assert (stored.state, stored.error_code) == (AttemptState.CANCELLED, "PREEMPTED")
        [task] = app.store.list_tasks(job_id)
        assert (task.state, task.attempts) == (TaskState.QUEUED, 0)
        app.scheduler.grant(gamer.id, 0, 1)
        app.scheduler.dispatch()
        assert gamer.sink.assigned == []  # paused after a preemption: no task at once
        app.clock.advance(app.scheduler.config.preempt_pause_seconds)  # type: ignore[attr-defined]
        app.scheduler.rescan()  # as the reaper does each second
        app.scheduler.dispatch()  # then the same node may have it again: nothing counted
    assert app.store.node_failures(job_id) == {}
    assert app.store.get_node(gamer.id).tasks_failed == 0
    ((attempt, _, _),) = gamer.sink.take()
    app.intake.failures(gamer.id, [Failure(attempt.id, "PREEMPTED", "too hot", True)])
    other.connect(credit=1)
    verdicts = other.answer(other.sink.take())
    assert verdicts[0].accepted and verdicts[0].credit == 1
    assert app.store.get_job(job_id).state == JobState.SUCCEEDED
    balances = app.store.balances()
    assert balances.get(f"node:{gamer.id}", 0) == 0 and balances[f"node:{other.id}"] == 1
    assert app.ledger.check().balanced


def test_an_ordinary_failure_still_counts(tmp_path) -> None:
    app = make_app(tmp_path)
    alice = make_client(app)
    node = FakeNode(app, "n1")
    node.connect(credit=1)
    job_id = echo(app, alice, 1)
    ((attempt, _, _),) = node.sink.take()
    app.intake.failures(node.id, [Failure(attempt.id, "EXECUTOR_CRASHED", "boom", True)])
    assert app.store.node_failures(job_id) == {node.id: 1}
    [task] = app.store.list_tasks(job_id)
    assert task.attempts == 1


def test_credit_reset_stops_leasing_to_a_paused_device(tmp_path) -> None:
    app = make_app(tmp_path)
    alice = make_client(app)
    node = FakeNode(app, "n1")
    node.connect(credit=0)
    app.scheduler.grant(node.id, 0, 5)
    app.scheduler.grant(node.id, 0, 0, reset=True)  # the device paused
    echo(app, alice, 3)
    assert node.sink.take() == []
    app.scheduler.grant(node.id, 0, 2, reset=True)
    app.scheduler.dispatch()
    assert len(node.sink.take()) == 2


def _hand_back(app, node: FakeNode) -> int:  # type: ignore[no-untyped-def]
    """A node that reports each assignment PREEMPTED at once and grants its credit again."""
    items = node.sink.take()
    if items:
        failures = [Failure(a.id, "PREEMPTED", "owner came back", True) for a, _, _ in items]
        app.intake.failures(node.id, failures)
        app.scheduler.grant(node.id, 0, len(items))
    return len(items)


def test_a_node_handing_back_every_task_cannot_keep_a_job_from_an_honest_node(tmp_path) -> None:
    app = make_app(tmp_path)
    alice = make_client(app)
    job_id = echo(app, alice, 20)
    hoarder, honest = FakeNode(app, "hoarder"), FakeNode(app, "honest")
    hoarder.connect(credit=4)  # first in line: dispatch serves it first
    honest.connect(credit=4)
    handed_back = 0
    for _ in range(400):  # 20 s of a loop every 50 ms, as the attack ran
        handed_back += _hand_back(app, hoarder)
        items = honest.sink.take()
        if items:
            assert all(v.accepted for v in honest.answer(items))
            app.scheduler.grant(honest.id, 0, len(items))
        app.scheduler.dispatch()
        app.clock.advance(0.05)  # type: ignore[attr-defined]
        if app.store.get_job(job_id).state == JobState.SUCCEEDED:
            break
    assert app.store.get_job(job_id).state == JobState.SUCCEEDED
    assert handed_back == 4  # its first four, which the honest node then ran
    balances = app.store.balances()
    assert balances[f"node:{honest.id}"] == 20 and balances.get(f"node:{hoarder.id}", 0) == 0
    # honest preemption stays free: no failure, no strike
    assert app.store.node_failures(job_id) == {}
    assert app.store.get_node(hoarder.id).tasks_failed == 0
    assert app.reputations.get(hoarder.id).strikes == 0


def test_a_node_alone_handing_back_every_task_churns_a_few_attempts_a_minute(tmp_path) -> None:
    app = make_app(tmp_path)
    alice = make_client(app)
    job_id = echo(app, alice, 20)
    hoarder = FakeNode(app, "hoarder")
    hoarder.connect(credit=4)
    handed_back = 0
    for _ in range(1200):  # ten minutes, a loop every half second
        handed_back += _hand_back(app, hoarder)
        app.scheduler.rescan()  # as the reaper does each second
        app.scheduler.dispatch()
        app.clock.advance(0.5)  # type: ignore[attr-defined]
    pause = app.scheduler.config.preempt_pause_seconds
    assert 4 * 600 / pause <= handed_back <= 4 * (600 / pause + 1)  # its credit once a pause
    assert [t.attempts for t in app.store.list_tasks(job_id)] == [0] * 20  # none used up
