"""A late result for a large job that has ended: its queued tasks are marked cancelled a
slice at a time after the end, so a result for an expired lease could find its task still
queued; settling it met a job no longer running (KeyError), and the worker's batch failed
each time it was sent again. It is refused as TASK_DONE, changing nothing."""

from pathlib import Path

from sparegrid.coordinator.domain import JobState
from tests.coordinator.helpers import FakeNode, echo, make_app, make_client


def test_a_late_result_for_a_large_job_that_ended_is_refused_not_settled(tmp_path: Path) -> None:
    app = make_app(tmp_path, bulk_above=2, lease_seconds=30.0)  # 10 tasks: a large job
    alice = make_client(app)
    node = FakeNode(app, "n1")
    node.connect(credit=4)
    job_id = echo(app, alice, 10)
    items = node.sink.take()
    assert len(items) == 4
    app.clock.advance(31)  # type: ignore[attr-defined]
    assert app.scheduler.reap() == 4  # the node went quiet: its leases ran out
    app.jobs.cancel(alice, job_id)
    verdicts = node.answer(items)  # it comes back with its results
    assert [v.code for v in verdicts] == ["TASK_DONE"] * 4
    assert all(f"job {job_id} has ended" in v.message for v in verdicts)
    assert app.reputations.get(node.id).strikes == 0  # an honest node's late result
    assert app.store.balance(f"node:{node.id}") == 0
    job = app.store.get_job(job_id)
    assert job is not None and job.state == JobState.CANCELLED
    assert app.ledger.check().balanced
