"""A worker's link to the coordinator goes silent (no reset, no byte either way), as when
the router of a volunteer's home drops off the network: the worker notices within 20 s,
drops the session and dials again, and works once the link is back. Real processes, the
link a proxy in the test."""

import time

import pytest

from sparegrid.sdk import AdminClient, Client
from sparegrid.worker.node.status import StatusUnavailable, read_status
from tests.e2e.helpers import online_nodes, wait_for
from tests.e2e.netcut import NetCut

pytestmark = pytest.mark.e2e


def connected(cluster) -> bool:
    try:
        return bool(read_status(cluster.root / "node1" / "status.sock").get("connected"))
    except StatusUnavailable:
        return False


def test_a_worker_notices_a_silent_link_and_reconnects_when_it_is_back(cluster) -> None:
    address = cluster.start_coordinator()
    admin = AdminClient(address, api_key=cluster.admin_key)
    _, key = admin.create_account("alice", credit=100)
    client = Client(address, api_key=key)
    with NetCut(address) as link:
        cluster.address = link.address  # the worker dials through the link
        cluster.start_worker("node1")
        cluster.address = address
        wait_for(lambda: online_nodes(admin) == 1 and connected(cluster), what="node1 online")

        link.cut()
        cut = time.monotonic()
        wait_for(lambda: not connected(cluster), timeout=25, what="node1 to notice the cut")
        print(f"node1 noticed the cut after {time.monotonic() - cut:.1f}s")
        assert "session lost" in cluster.workers["node1"].tail()

        link.mend()
        wait_for(lambda: connected(cluster), timeout=30, what="node1 connected again")
        job = client.echo("back", tasks=2).wait(timeout=30)
    assert job.state == "succeeded"
    [node] = admin.nodes()
    assert node.credit == 2
    assert admin.ledger_check().balanced
