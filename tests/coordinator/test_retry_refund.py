"""A retried job that ends again gets what is left in its escrow back, each time: the
second refund of a job was taken for a repeat of the first (one idempotency key per job),
so the client lost that credit and `admin ledger check` failed."""

from pathlib import Path

from sparegrid.coordinator.domain import JobState, client_account, escrow_account
from tests.coordinator.helpers import make_app
from tests.coordinator.verifying import nodes, run, submit


def test_every_end_of_a_retried_job_refunds_what_is_left(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    [node] = nodes(app, "volunteer")
    job_id = submit(app, 4)  # alice, 1,000 credit
    alice = app.store.get_account_by_name("alice")
    assert alice is not None
    app.jobs.cancel(alice, job_id)
    for _ in range(2):  # retried, one task run, cancelled again: twice
        app.jobs.retry(alice, job_id)
        assert run(node, credit=1) == 1
        app.jobs.cancel(alice, job_id)
        job = app.store.get_job(job_id)
        assert job is not None and job.state == JobState.CANCELLED
        assert app.store.balance(escrow_account(job_id)) == 0
    assert job.cost_spent == 2
    assert app.store.balance(client_account("alice")) == 1000 - job.cost_spent
    report = app.ledger.check()
    assert report.balanced, report.problems
