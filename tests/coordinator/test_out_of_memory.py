"""A task that ran out of device memory is retried only on a device with more of it."""

from sparegrid.coordinator.domain import Device, JobState, TaskState
from sparegrid.coordinator.services.jobs import JobSpec
from sparegrid.coordinator.services.results import Failure
from tests.coordinator.helpers import FakeNode, make_app, make_client

GIB = 1 << 30


def gpu(gib: int) -> Device:
    return Device(index=0, kind="cuda", name=f"{gib} GiB GPU", memory_bytes=gib * GIB)


def oom(node: FakeNode) -> None:
    ((attempt, _, _),) = node.sink.take()
    message = "out of memory on the GPU running a batch of one sample"
    node.app.intake.failures(node.id, [Failure(attempt.id, "CUDA_OOM", message, True)])


def test_out_of_memory_goes_to_a_bigger_device_only(tmp_path) -> None:
    app = make_app(tmp_path)
    alice = make_client(app)
    small, same, big = (
        FakeNode(app, "small", device=gpu(8)),
        FakeNode(app, "same", device=gpu(8)),
        FakeNode(app, "big", device=gpu(80)),
    )
    small.connect(credit=1)
    job_id = app.jobs.submit(alice, JobSpec(kind="echo", params=b'{"data": "x"}')).id
    big.connect(credit=0)
    oom(small)
    same.connect(credit=1)
    assert same.sink.take() == []  # 8 GiB was not enough: another 8 GiB device is not asked
    app.scheduler.grant(big.id, 0, 1)
    app.scheduler.dispatch()
    assert big.answer(big.sink.take())[0].accepted
    assert app.store.get_job(job_id).state == JobState.SUCCEEDED  # type: ignore[union-attr]


def test_out_of_memory_with_no_bigger_device_fails_the_task_saying_why(tmp_path) -> None:
    app = make_app(tmp_path)
    alice = make_client(app)
    node = FakeNode(app, "only", device=gpu(8))
    node.connect(credit=1)
    job_id = app.jobs.submit(alice, JobSpec(kind="echo", params=b'{"data": "x"}')).id
    oom(node)
    [task] = app.store.list_tasks(job_id)
    assert task.state == TaskState.FAILED
    assert "no connected device has more than 8.0 GiB" in task.error
    job = app.store.get_job(job_id)
    assert job is not None and job.state == JobState.FAILED
    assert app.ledger.check().balanced
