"""A retried job that ends again leaves none of its tasks queued: found by the stateful
model (test_settlement_model.py)."""

from pathlib import Path

from sparegrid.coordinator.domain import JobState, TaskState
from tests.coordinator.helpers import make_app
from tests.coordinator.verifying import nodes, run, submit


def test_a_retried_job_cancelled_before_its_tasks_ran_again_has_them_cancelled(
    tmp_path: Path,
) -> None:
    """A retry queues its tasks as ranges read from the store when a node takes them, and
    ending the job cancelled only the tasks it had read: the others stayed queued in the
    store under a cancelled job (its count said cancelled), read back and swept only at the
    coordinator's next start."""
    app = make_app(tmp_path)
    [node] = nodes(app, "volunteer")
    job_id = submit(app, 4)
    alice = app.store.get_account_by_name("alice")
    assert alice is not None
    assert run(node, credit=1) == 1
    app.jobs.cancel(alice, job_id)
    app.retries.retry(alice, job_id)  # no node had room: none of them read back yet
    app.jobs.cancel(alice, job_id)
    job = app.store.get_job(job_id)
    assert job is not None and job.state == JobState.CANCELLED
    states = app.store.task_counts(job_id)
    assert (states[TaskState.SUCCEEDED], states[TaskState.CANCELLED]) == (1, 3), states
    assert job_id not in app.scheduler.sweeps and app.store.queued_tasks() == []
    assert app.ledger.check().balanced
