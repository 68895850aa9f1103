"""A task a node's own policy stopped (PREEMPTED) goes back to the queue and is never
held against the node: no attempt used, no failure counted, no exclusion, no pay."""

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
        app.scheduler.dispatch()  # the same node may have it again: nothing counts against it
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
