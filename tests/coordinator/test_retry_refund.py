"""A retried job that ends again gets what is left in its escrow back, each time: the
second refund of a job was taken for a repeat of the first (one idempotency key per job),
so the client lost that credit and `admin ledger check` failed."""

from pathlib import Path

import pytest

from sparegrid.coordinator.domain import MAX_BALANCE, JobState, client_account, escrow_account
from sparegrid.coordinator.errors import CoordinatorError
from sparegrid.coordinator.services.prices import Price
from tests.coordinator.helpers import make_app, make_client
from tests.coordinator.verifying import nodes, run, submit


def test_every_end_of_a_retried_job_refunds_what_is_left(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    [node] = nodes(app, "volunteer")
    job_id = submit(app, 4)  # alice, 1,000 credit
    alice = app.store.get_account_by_name("alice")
    assert alice is not None
    app.jobs.cancel(alice, job_id)
    for _ in range(2):  # retried, one task run, cancelled again: twice
        app.retries.retry(alice, job_id)
        assert run(node, credit=1) == 1
        app.jobs.cancel(alice, job_id)
        job = app.store.get_job(job_id)
        assert job is not None and job.state == JobState.CANCELLED
        assert app.store.balance(escrow_account(job_id)) == 0
    assert job.cost_spent == 2
    assert app.store.balance(client_account("alice")) == 1000 - job.cost_spent
    report = app.ledger.check()
    assert report.balanced, report.problems


def test_a_retry_whose_hold_would_pass_what_a_job_records_is_refused(tmp_path: Path) -> None:
    """Each run's hold adds to the job's cost_held, a BIGINT: a client holding much
    credit, cancelling and retrying, took it past 2^63 - 1 (PostgreSQL failed the group
    commit). The retry is refused, changing nothing; a new job of the same tasks is taken."""
    app = make_app(tmp_path, prices={"echo": Price(1 << 60)})
    alice = make_client(app)
    app.ledger.grant("alice", MAX_BALANCE - app.accounts.issued(), key="a large client")
    job_id = submit(app, 2)  # 2 tasks, up to 3 paid results each: 6 x 2^60 held
    app.jobs.cancel(alice, job_id)
    with pytest.raises(CoordinatorError) as err:
        app.retries.retry(alice, job_id)
    assert err.value.code == "JOB_NOT_RETRYABLE" and "2^63 - 1" in err.value.message
    job = app.store.get_job(job_id)
    assert job is not None and job.state == JobState.CANCELLED and job.cost_held == 6 << 60
    assert app.store.balance(escrow_account(job_id)) == 0
    assert submit(app, 2) != job_id  # a new job of the same tasks is taken
    report = app.ledger.check()
    assert report.balanced, report.problems
