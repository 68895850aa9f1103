"""Scheduling, results, credit and faults on the in-memory store with a fake clock."""

import json

import pytest

from sparegrid.coordinator.domain import Device, JobState, Requirements, TaskState
from sparegrid.coordinator.errors import CoordinatorError, ErrorKind
from sparegrid.coordinator.services.jobs import JobSpec
from sparegrid.coordinator.services.results import Failure
from sparegrid.wire import Signer
from tests.coordinator.helpers import FakeNode, echo, make_app, make_client


def balances(app):
    return app.store.balances()


def test_job_runs_to_success_and_pays_each_result_once(tmp_path) -> None:
    app = make_app(tmp_path)
    alice = make_client(app, credit=100)
    node = FakeNode(app, "n1")
    node.connect(credit=10)
    job_id = echo(app, alice, 4)
    items = node.sink.take()
    assert len(items) == 4
    verdicts = node.answer(items)
    assert all(v.accepted for v in verdicts)
    job = app.store.get_job(job_id)
    assert job.state == JobState.SUCCEEDED
    assert job.cost_spent == 4
    assert balances(app)[f"node:{node.id}"] == 4
    assert balances(app)["client:alice"] == 96
    assert app.ledger.check().balanced
    # the same batch again (a worker resending its outbox): accepted, not paid twice
    again = node.answer(items)
    assert all(v.accepted and v.code == "DUPLICATE" for v in again)
    assert balances(app)[f"node:{node.id}"] == 4
    assert app.ledger.check().balanced


def test_receipt_is_stored_and_verifies(tmp_path) -> None:
    from sparegrid.v1 import common_pb2
    from sparegrid.wire.receipt import verify_receipt

    app = make_app(tmp_path)
    alice = make_client(app)
    node = FakeNode(app, "n1")
    node.connect()
    job_id = echo(app, alice, 3)
    node.answer(node.sink.take())
    for task in app.store.list_tasks(job_id):
        receipt = common_pb2.Receipt.FromString(task.receipt)
        verified = verify_receipt(receipt)
        assert verified.node_id == node.id
        assert verified.statement.task_id == task.id


def test_forged_signature_is_rejected_and_earns_nothing(tmp_path) -> None:
    app = make_app(tmp_path)
    alice = make_client(app)
    node = FakeNode(app, "n1")
    node.connect()
    job_id = echo(app, alice, 2)
    items = node.sink.take()
    verdicts = node.answer(items, signer=Signer.generate())
    assert [v.code for v in verdicts] == ["BAD_SIGNATURE"]
    assert not any(v.accepted for v in verdicts)
    assert balances(app).get(f"node:{node.id}", 0) == 0
    assert app.store.task_counts(job_id)[TaskState.SUCCEEDED] == 0


def test_result_for_a_task_leased_to_another_node_changes_nothing(tmp_path) -> None:
    app = make_app(tmp_path)
    alice = make_client(app)
    honest, thief = FakeNode(app, "honest"), FakeNode(app, "thief")
    honest.connect(credit=5)
    job_id = echo(app, alice, 2)
    items = honest.sink.take()
    thief.connect(credit=0)
    verdicts = thief.answer(items)
    assert [v.code for v in verdicts] == ["NOT_LEASED", "NOT_LEASED"]
    assert app.store.task_counts(job_id)[TaskState.LEASED] == 2
    assert balances(app).get(f"node:{thief.id}", 0) == 0
    assert all(v.accepted for v in honest.answer(items))


def test_expired_lease_is_requeued_and_finishes_elsewhere(tmp_path) -> None:
    app = make_app(tmp_path, lease_seconds=10.0)
    alice = make_client(app)
    slow, fast = FakeNode(app, "slow"), FakeNode(app, "fast")
    slow.connect(credit=1)
    job_id = echo(app, alice, 1)
    stale = slow.sink.take()
    assert len(stale) == 1
    app.clock.advance(11)
    assert app.scheduler.reap() == 1
    assert slow.sink.cancelled == [stale[0][0].id]
    fast.connect(credit=1)
    app.scheduler.dispatch()
    fresh = fast.sink.take()
    assert len(fresh) == 1
    assert fast.answer(fresh)[0].accepted
    # the slow node's late result: the task is done, nothing is paid
    late = slow.answer(stale)
    assert not late[0].accepted
    assert app.store.get_job(job_id).state == JobState.SUCCEEDED
    assert balances(app).get(f"node:{slow.id}", 0) == 0
    assert app.ledger.check().balanced


def test_heartbeat_keeps_a_lease(tmp_path) -> None:
    app = make_app(tmp_path, lease_seconds=10.0)
    alice = make_client(app)
    node = FakeNode(app, "n1")
    node.connect(credit=1)
    echo(app, alice, 1)
    items = node.sink.take()
    for _ in range(5):
        app.clock.advance(6)
        app.scheduler.heartbeat(node.id)
        assert app.scheduler.reap() == 0
    assert node.answer(items)[0].accepted


def test_node_that_keeps_failing_a_job_stops_getting_it(tmp_path) -> None:
    app = make_app(tmp_path)
    alice = make_client(app)
    bad, good = FakeNode(app, "bad"), FakeNode(app, "good")
    bad.connect(credit=1)
    job_id = app.jobs.submit(alice, JobSpec(kind="echo", params=b'{"tasks": 3}', max_attempts=5)).id
    for _ in range(2):
        ((attempt, _, _),) = bad.sink.take()
        app.intake.failures(bad.id, [Failure(attempt.id, "EXECUTOR_CRASHED", "boom", True)])
        app.scheduler.grant(bad.id, 0, 1)
        app.scheduler.dispatch()
    assert bad.sink.take() == []  # two failures: no more of this job
    good.connect(credit=10)
    good.answer(good.sink.take())
    assert app.store.get_job(job_id).state == JobState.SUCCEEDED


def test_task_out_of_attempts_fails_the_job_and_refunds(tmp_path) -> None:
    app = make_app(tmp_path)
    alice = make_client(app, credit=50)
    nodes = [FakeNode(app, f"n{i}") for i in range(3)]
    job_id = app.jobs.submit(alice, JobSpec(kind="echo", params=b'{"tasks": 5}', max_attempts=2)).id
    nodes[0].connect(credit=1)
    ((a, _, _),) = nodes[0].sink.take()
    app.intake.failures(nodes[0].id, [Failure(a.id, "X", "bad", True)])
    nodes[1].connect(credit=1)
    ((b, _, _),) = nodes[1].sink.take()
    app.intake.failures(nodes[1].id, [Failure(b.id, "X", "bad again", True)])
    job = app.store.get_job(job_id)
    assert job.state == JobState.FAILED
    assert "bad again" in job.error
    assert balances(app)["client:alice"] == 50
    assert app.ledger.check().balanced


def test_non_retryable_failure_fails_at_once(tmp_path) -> None:
    app = make_app(tmp_path)
    alice = make_client(app)
    node = FakeNode(app, "n1")
    node.connect(credit=1)
    job_id = echo(app, alice, 1)
    ((a, _, _),) = node.sink.take()
    app.intake.failures(node.id, [Failure(a.id, "BAD_PARAMS", "range outside", False)])
    assert app.store.get_job(job_id).state == JobState.FAILED


def test_cancel_refunds_and_stops_leased_work(tmp_path) -> None:
    app = make_app(tmp_path)
    alice = make_client(app, credit=100)
    node = FakeNode(app, "n1")
    node.connect(credit=2)
    job_id = echo(app, alice, 10)
    items = node.sink.take()
    node.answer(items[:1])
    job = app.jobs.cancel(alice, job_id)
    assert job.state == JobState.CANCELLED
    assert node.sink.cancelled == [items[1][0].id]
    assert balances(app)["client:alice"] == 99
    assert app.ledger.check().balanced
    assert not node.answer(items[1:])[0].accepted


def test_insufficient_credit_says_balance_and_cost(tmp_path) -> None:
    app = make_app(tmp_path)
    alice = make_client(app, credit=5)
    with pytest.raises(CoordinatorError) as err:
        echo(app, alice, 10)
    assert err.value.kind == ErrorKind.PRECONDITION
    assert "10" in err.value.message and "holds 5" in err.value.message
    assert app.store.list_jobs() == []
    assert balances(app)["client:alice"] == 5


def test_unknown_kind_lists_known_kinds(tmp_path) -> None:
    app = make_app(tmp_path)
    alice = make_client(app)
    with pytest.raises(CoordinatorError) as err:
        app.jobs.submit(alice, JobSpec(kind="mine-bitcoin"))
    assert err.value.kind == ErrorKind.INVALID
    assert "checksum" in err.value.message and "echo" in err.value.message


@pytest.mark.parametrize(
    "params, words",
    [
        (b"{not json", "JSON"),
        (b"[1, 2]", "object"),
        (b'{"tasks": 0}', "between"),
        (b'{"tasks": "many"}', "integer"),
        (b'{"colour": "red"}', "unknown parameter"),
    ],
)
def test_bad_params_are_refused_at_submit(tmp_path, params, words) -> None:
    app = make_app(tmp_path)
    alice = make_client(app)
    with pytest.raises(CoordinatorError) as err:
        app.jobs.submit(alice, JobSpec(kind="echo", params=params))
    assert words in err.value.message
    assert app.store.list_jobs() == []


def test_another_clients_job_is_not_found(tmp_path) -> None:
    app = make_app(tmp_path)
    alice, bob = make_client(app, "alice"), make_client(app, "bob")
    job_id = echo(app, alice, 1)
    with pytest.raises(CoordinatorError) as err:
        app.jobs.get(bob, job_id)
    assert err.value.kind == ErrorKind.NOT_FOUND
    with pytest.raises(CoordinatorError):
        app.jobs.cancel(bob, job_id)
    assert app.store.get_job(job_id).state == JobState.QUEUED


def test_submit_is_idempotent(tmp_path) -> None:
    app = make_app(tmp_path)
    alice = make_client(app, credit=15)
    spec = JobSpec(kind="echo", params=b'{"tasks": 5}', idempotency_key="k1")
    first = app.jobs.submit(alice, spec)
    second = app.jobs.submit(alice, spec)
    assert first.id == second.id
    assert balances(app)["client:alice"] == 0  # 5 tasks, up to 3 paid results each


def test_requirements_route_work_to_matching_devices(tmp_path) -> None:
    app = make_app(tmp_path)
    alice = make_client(app)
    cpu = FakeNode(app, "cpu")
    gpu = FakeNode(
        app,
        "gpu",
        device=Device(
            index=0, kind="cuda", name="H200", memory_bytes=140 << 30, compute_capability="9.0"
        ),
    )
    small = FakeNode(
        app,
        "small",
        device=Device(
            index=0, kind="cuda", name="T4", memory_bytes=16 << 30, compute_capability="7.5"
        ),
    )
    for node in (cpu, gpu, small):
        node.connect()
    req = Requirements(device_kind="cuda", min_memory_bytes=40 << 30, min_compute_capability="8.0")
    app.jobs.submit(alice, JobSpec(kind="echo", params=b'{"tasks": 3}', requirements=req))
    assert cpu.sink.take() == [] and small.sink.take() == []
    assert len(gpu.sink.take()) == 3


def test_a_job_that_cannot_run_says_why(tmp_path) -> None:
    app = make_app(tmp_path)
    alice = make_client(app)

    def waiting(spec: JobSpec) -> str:
        job = app.jobs.submit(alice, spec)
        return app.jobs.waiting(job.id)

    echo3 = {"kind": "echo", "params": b'{"tasks": 3}'}
    assert waiting(JobSpec(**echo3)) == "no worker is connected"  # type: ignore[arg-type]
    FakeNode(app, "sums", kinds=("checksum",), owner="o1").connect(credit=0)
    assert waiting(JobSpec(**echo3)) == (  # type: ignore[arg-type]
        "no connected node can run it: it needs a node with the echo executor"
    )
    a = FakeNode(app, "a", owner="o1")
    a.connect(credit=0)
    assert waiting(JobSpec(**echo3)) == ""  # type: ignore[arg-type]
    big = Requirements(min_memory_bytes=80 << 30)
    assert waiting(JobSpec(**echo3, requirements=big)) == (  # type: ignore[arg-type]
        "no connected node can run it: it needs a GPU with 80.0 GiB of memory or more"
    )
    # a CPU's memory is no GPU's: 1 MiB asked, and the CPU node has more RAM than that
    small = Requirements(min_memory_bytes=1 << 20)
    assert waiting(JobSpec(**echo3, requirements=small)).endswith(  # type: ignore[arg-type]
        "it needs a GPU with 1 MiB of memory or more"
        " (a CPU counts only for a job kept on CPUs: --device cpu, device='cpu')"
    )
    blender = JobSpec(**echo3, requirements=Requirements(software={"blender": "5.0"}))  # type: ignore[arg-type]
    assert waiting(blender).endswith("it needs blender 5.0")
    quorum = JobSpec(**echo3, replicas=3, quorum=2)  # type: ignore[arg-type]
    FakeNode(app, "b", owner="o2").connect(credit=0)
    job = app.jobs.submit(alice, quorum)
    assert app.jobs.waiting(job.id) == (
        "policy 2 of 3 needs results from 3 different owners; nodes of 2 owner(s) can run it now"
    )
    FakeNode(app, "c", owner="o3").connect(credit=0)
    assert app.jobs.waiting(job.id) == ""
    for node_id in list(app.scheduler.sessions):
        app.scheduler.grant(node_id, 0, 0, reset=True)  # every volunteer paused its GPU
    assert app.jobs.waiting(job.id).startswith("3 device(s) that can run it are paused")
    for node_id in list(app.scheduler.sessions):
        app.scheduler.grant(node_id, 0, 1)
    assert app.jobs.waiting(job.id) == ""
    app.jobs.cancel(alice, job.id)
    assert app.jobs.waiting(job.id) == ""  # a final job waits for nothing


def test_node_without_the_executor_gets_nothing(tmp_path) -> None:
    app = make_app(tmp_path)
    alice = make_client(app)
    node = FakeNode(app, "n1", kinds=("checksum",))
    node.connect()
    echo(app, alice, 2)
    assert node.sink.take() == []


def test_disconnect_gives_grace_then_requeues(tmp_path) -> None:
    app = make_app(tmp_path, lease_seconds=60.0, reconnect_grace_seconds=5.0)
    alice = make_client(app)
    node = FakeNode(app, "n1")
    node.connect(credit=1)
    echo(app, alice, 1)
    ((attempt, task, kind),) = node.sink.take()
    app.scheduler.disconnect(node.id, node.sink)
    app.clock.advance(3)
    resumed, cancelled = node.connect(credit=0, running=[attempt.id, "bogus"])
    assert resumed == [attempt.id] and cancelled == ["bogus"]
    assert node.answer([(attempt, task, kind)])[0].accepted


def test_restart_rebuilds_queue_from_store(tmp_path) -> None:
    from sparegrid.coordinator.app import App
    from sparegrid.coordinator.settings import Settings

    app = make_app(tmp_path)
    alice = make_client(app)
    node = FakeNode(app, "n1")
    node.connect(credit=2)
    job_id = echo(app, alice, 5)
    items = node.sink.take()
    # a new coordinator over the same store: queue, leases and credit carry over
    app2 = App(app.store, Settings(data_dir=tmp_path), clock=app.clock)
    app2.scheduler.load()
    node.app = app2
    resumed, _ = node.connect(credit=10, running=[a.id for a, _, _ in items])
    assert len(resumed) == 2
    rest = node.sink.take()
    assert len(rest) == 2  # a new node holds at most 4 tasks at once (its window)
    node.answer(items + rest)
    app2.scheduler.dispatch()
    last = node.sink.take()
    assert len(last) == 1
    node.answer(last)
    assert app2.store.get_job(job_id).state == JobState.SUCCEEDED
    assert app2.ledger.check().balanced
    assert app2.store.balances()[f"node:{node.id}"] == 5


def test_checksum_splits_the_input(tmp_path) -> None:
    app = make_app(tmp_path)
    alice = make_client(app)
    data = bytes(range(256)) * 40
    from sparegrid.wire import sha256_hex

    digest = sha256_hex(data)
    path = app.blobs.path(digest)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    with pytest.raises(CoordinatorError):  # not uploaded by alice
        app.jobs.submit(
            alice, JobSpec(kind="checksum", params=b'{"tasks": 3}', inputs={"data": digest})
        )
    app.store.add_blob_owners([digest], alice.id)
    job = app.jobs.submit(
        alice, JobSpec(kind="checksum", params=b'{"tasks": 3}', inputs={"data": digest})
    )
    tasks = app.store.list_tasks(job.id)
    ranges = [json.loads(t.params) for t in tasks]
    assert ranges == [
        {"offset": 0, "length": 3413},
        {"offset": 3413, "length": 3413},
        {"offset": 6826, "length": 3414},
    ]
    assert all(t.inputs[0].digest == digest for t in tasks)
