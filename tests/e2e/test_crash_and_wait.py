"""A worker killed and restarted is not a failing node: the only node of a job finishes it.
A job that no connected node can run fails after the coordinator's wait limit, saying why.
Real coordinator and worker processes."""

import pytest

from sparegrid.sdk import DeviceKind, Requirements
from sparegrid.worker.node.status import StatusUnavailable, read_status
from tests.e2e.helpers import setup, wait_for

pytestmark = pytest.mark.e2e


def working(cluster) -> bool:
    try:
        snapshot = read_status(cluster.root / "node1" / "status.sock")
    except StatusUnavailable:
        return False
    return any(d["state"] == "working" for d in snapshot["devices"])


def test_the_only_node_killed_and_restarted_still_finishes_the_job(cluster) -> None:
    # a restart well within the reconnect grace, as systemd's Restart= gives
    admin, client = setup(cluster, workers=1, extra=("--reconnect-grace", "30"))
    job = client.echo("slow", tasks=6, sleep_ms=1500)
    wait_for(lambda: working(cluster), what="node1 working")  # it holds its prefetch too
    for _ in range(2):  # SIGKILLed twice, mid-task, with prefetched tasks in hand
        cluster.kill(cluster.workers["node1"])
        cluster.start_worker("node1")
        wait_for(lambda: working(cluster), timeout=60, what="node1 working again")
    job = job.wait(timeout=120)
    assert job.state == "succeeded", (job.error, job.waiting)
    [node] = admin.nodes()
    assert node.tasks_failed == 0  # a crash is not a failure of the node
    assert node.tasks_succeeded == 6
    assert admin.ledger_check().balanced


def test_a_job_no_node_can_run_fails_after_the_wait_limit(cluster) -> None:
    _, client = setup(cluster, workers=1, extra=("--wait-limit", "2s"))
    job = client.submit(
        "echo", {"tasks": 2}, requirements=Requirements(device_kind=DeviceKind.CUDA)
    )
    job = job.wait(timeout=60)
    assert job.state == "failed"
    assert job.error == (
        "waited 2s (the coordinator's wait limit): no connected node can run it: "
        "it needs a cuda device"
    )
    assert job.counts.cancelled == 2
    assert client.account().balance == 1000  # the escrow came back
