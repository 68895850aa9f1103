"""Receipts of accepted results are countersigned once per job per settle (one signature
over the Merkle root of the job's validations: sparegrid.wire.receipt.countersign_batch),
so a receipt's path never holds a hash of another client's validation."""

from pathlib import Path

from sparegrid.v1 import common_pb2
from sparegrid.wire.receipt import verify_countersignature
from tests.coordinator.helpers import FakeNode, echo, make_app, make_client


def test_a_settle_signs_each_clients_job_apart(tmp_path: Path) -> None:
    """One node's batch holds results of two clients' jobs: each job's receipts share one
    signature, and no path carries a hash of the other client's validations."""
    app = make_app(tmp_path)
    node = FakeNode(app, "n1")
    node.connect(credit=10)
    jobs = [echo(app, make_client(app, name), 2) for name in ("alice", "bob")]
    app.scheduler.dispatch()
    items = node.sink.take()
    assert len(items) == 4
    assert all(v.accepted for v in node.answer(items))
    signatures = {}
    for job_id in jobs:
        tasks = app.store.list_tasks(job_id)
        signed = [common_pb2.Receipt.FromString(t.receipt) for t in tasks]
        for task, receipt in zip(tasks, signed, strict=True):
            checked = verify_countersignature(receipt, app.signer.public_key)
            assert checked.task_id == task.id
            assert receipt.validation_count == 2
        signatures[job_id] = {r.coordinator_signature for r in signed}
    assert [len(s) for s in signatures.values()] == [1, 1]
    assert signatures[jobs[0]] != signatures[jobs[1]]
