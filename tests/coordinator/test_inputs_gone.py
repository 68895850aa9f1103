"""A job's input blob removed while the coordinator serves (an operator's cleanup, a disk
error, a bucket's lifecycle rule): the nodes fail their attempts INPUT_UNAVAILABLE, and the
job stalled until the wait limit. Now the coordinator looks in its own blob store and, not
finding the blob, fails the job at once naming it: the tasks that ran are paid, the rest
cost nothing, the held credit comes back. A node's claim alone fails nothing: with the blob
there, the task is retried and the job succeeds."""

from pathlib import Path

from sparegrid.coordinator.app import App
from sparegrid.coordinator.domain import JobState, TaskState, escrow_account, node_account
from sparegrid.coordinator.services.jobs import JobSpec
from sparegrid.coordinator.services.results import Failure
from sparegrid.wire import sha256_hex
from tests.coordinator.helpers import FakeNode, make_app, make_client


def checksum_job(app: App, tasks: int) -> tuple[str, str]:
    """A checksum job of alice's over a blob stored on local disk: its id and the digest."""
    alice = make_client(app)
    data = b"the input, " * 1000
    digest = sha256_hex(data)
    path = app.blobs.path(digest)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    app.store.add_blob_owners([digest], alice.id)
    spec = JobSpec(
        kind="checksum", params=f'{{"tasks": {tasks}}}'.encode(), inputs={"data": digest}
    )
    return app.jobs.submit(alice, spec).id, digest


def unavailable(node: FakeNode, attempt_id: str) -> None:
    failure = Failure(attempt_id, "INPUT_UNAVAILABLE", "could not fetch an input", True)
    [verdict] = node.app.intake.failures(node.id, [failure])
    assert verdict.accepted


def test_a_blob_removed_while_serving_fails_its_job_naming_it(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    job_id, digest = checksum_job(app, tasks=4)
    node = FakeNode(app, "n1", kinds=("checksum",))
    node.connect(credit=2)
    ran, stalled = node.sink.take()
    assert node.answer([ran])[0].accepted
    paid = app.store.balance(node_account(node.id))
    assert paid > 0

    app.blobs.path(digest).unlink()  # an operator's cleanup
    unavailable(node, stalled[0].id)

    job = app.store.get_job(job_id)
    assert job is not None and job.state == JobState.FAILED
    assert job.error.startswith(f"INPUT_UNAVAILABLE: input 'data' (blob {digest}) was removed")
    assert str(app.blobs.root) in job.error and "submit the job again" in job.error
    assert job_id not in app.scheduler.jobs
    assert sorted(t.state for t in app.store.list_tasks(job_id)) == sorted(
        [TaskState.SUCCEEDED] + [TaskState.CANCELLED] * 3
    )
    assert app.store.balance(escrow_account(job_id)) == 0  # the held credit came back
    alice = app.store.get_account_by_name("alice")
    assert alice is not None and app.accounts.balance(alice) == 1000 - job.cost_spent
    assert app.store.balance(node_account(node.id)) == paid  # the task that ran, only
    report = app.ledger.check()
    assert report.balanced, report.problems


def test_a_node_claiming_an_input_unavailable_that_is_there_fails_nothing(
    tmp_path: Path,
) -> None:
    app = make_app(tmp_path)
    job_id, digest = checksum_job(app, tasks=2)
    rogue = FakeNode(app, "rogue", kinds=("checksum",))
    rogue.connect(credit=2)
    for attempt, _, _ in rogue.sink.take():
        unavailable(rogue, attempt.id)
    job = app.store.get_job(job_id)
    assert job is not None and job.state in (JobState.QUEUED, JobState.RUNNING), job.error
    assert job_id in app.scheduler.jobs and app.blobs.exists(digest)

    honest = FakeNode(app, "honest", kinds=("checksum",))
    honest.connect(credit=2)
    assert all(v.accepted for v in honest.answer(honest.sink.take()))
    job = app.store.get_job(job_id)
    assert job is not None and job.state == JobState.SUCCEEDED
    report = app.ledger.check()
    assert report.balanced, report.problems
