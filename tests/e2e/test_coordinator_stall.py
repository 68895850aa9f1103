"""The coordinator's process is stopped for longer than a lease (SIGSTOP here; a paused
VM or a swap storm in the wild) while its workers run tasks. Their heartbeats wait in its
sockets meanwhile: once it runs again it reads them before it expires any lease, so no
healthy node is charged with a lost lease for the coordinator's own stall. Real
processes."""

import os
import signal
import time

import pytest

from tests.e2e.helpers import setup, wait_for

pytestmark = pytest.mark.e2e


def test_a_stopped_coordinator_holds_its_stall_against_no_node(cluster) -> None:
    admin, client = setup(cluster, workers=2)  # leases of 3 s, heartbeats every 0.5 s
    job = client.echo("s", tasks=6, sleep_ms=1500)
    wait_for(lambda: client.get_job(job.id).counts.leased >= 2, what="both nodes working")
    coordinator = cluster.coordinator
    assert coordinator is not None
    os.killpg(coordinator.popen.pid, signal.SIGSTOP)
    time.sleep(6)
    os.killpg(coordinator.popen.pid, signal.SIGCONT)

    job = job.wait(timeout=60)
    assert job.state == "succeeded"
    nodes = admin.nodes()
    assert [n.tasks_failed for n in nodes] == [0, 0]
    assert sum(n.credit for n in nodes) == job.refresh().cost_spent
    assert "LEASE_EXPIRED" not in coordinator.tail(400)
    assert admin.ledger_check().balanced
