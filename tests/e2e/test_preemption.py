"""A simulated owner takes node1's GPU while it runs a task: node1 stops the task at once
and reports it preempted; the task finishes on node2, which alone is paid."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sparegrid.sdk import AdminClient, Client
from sparegrid.worker.node.status import StatusUnavailable, read_status
from tests.e2e.helpers import online_nodes, wait_for

pytestmark = pytest.mark.e2e

POLICY = ("--idle-seconds", "0", "--poll-interval", "0.05")


def device_state(status_sock: Path) -> str:
    try:
        return str(read_status(status_sock)["devices"][0]["state"])
    except StatusUnavailable:
        return "not up"


def test_owner_takes_the_gpu_task_is_preempted_and_finishes_elsewhere(
    cluster, tmp_path: Path
) -> None:
    cluster.start_coordinator()
    gpu1, gpu2 = tmp_path / "gpu1.json", tmp_path / "gpu2.json"
    cluster.start_worker("node1", "--device-state", f"file:{gpu1}", *POLICY)
    admin = AdminClient(cluster.address, api_key=cluster.admin_key)
    _, key = admin.create_account("alice", credit=100)
    client = Client(cluster.address, api_key=key)
    wait_for(lambda: online_nodes(admin) == 1, what="node1 online")
    job = client.echo("work", tasks=1, sleep_ms=6000)
    status1 = cluster.root / "node1" / "status.sock"
    wait_for(lambda: device_state(status1) == "working", what="the task running on node1")
    cluster.start_worker("node2", "--device-state", f"file:{gpu2}", *POLICY)
    wait_for(lambda: online_nodes(admin) == 2, what="node2 online")

    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        taken = time.monotonic()
        state = {
            "devices": {
                "0": {"utilization": 97, "processes": [{"pid": owner.pid, "kind": "graphics"}]}
            }
        }
        tmp = gpu1.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        tmp.replace(gpu1)
        wait_for(lambda: device_state(status1) == "paused: owner active", what="node1 paused")
        print(f"node1 paused {time.monotonic() - taken:.3f}s after the owner took the GPU")
        job = job.wait(timeout=60)
    finally:
        owner.kill()
        owner.wait()

    assert job.state == "succeeded"
    [result] = job.results()
    nodes = {n.name: n for n in admin.nodes()}
    assert result.node_id == nodes["node2"].node_id
    assert (nodes["node1"].credit, nodes["node2"].credit) == (0, 1)
    assert nodes["node1"].tasks_failed == 0  # preemption is not held against the node
    snapshot = read_status(status1)
    assert snapshot["devices"][0]["tasks"] == []
    assert any("stopped 1 task(s)" in e["message"] for e in snapshot["errors"])
    shown = subprocess.run(
        [
            sys.executable,
            "-m",
            "sparegrid.cli.main",
            "worker",
            "status",
            "--data-dir",
            str(cluster.root / "node2"),
        ],
        capture_output=True,
        text=True,
        check=True,
        env=cluster.env,
    )
    assert "credit: 1 in the coordinator's ledger, +1 today" in shown.stdout
    assert admin.ledger_check().balanced
