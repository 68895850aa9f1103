"""A client's link to its coordinator goes silent (no reset, no byte either way) while it
waits for a job, as when a laptop's Wi-Fi drops: the SDK's pings find the dead connection
within about 25 s and the watch goes on through the next address of its list. Without
them the watch waited on the dead connection until its own timeout. Real processes, the
link a proxy in the test."""

import threading
import time

import pytest

from sparegrid.sdk import AdminClient, Client
from tests.e2e.helpers import online_nodes, wait_for
from tests.e2e.netcut import NetCut

pytestmark = pytest.mark.e2e


def test_a_watch_on_a_silent_link_moves_to_the_next_address(cluster) -> None:
    address = cluster.start_coordinator()
    admin = AdminClient(address, api_key=cluster.admin_key)
    _, key = admin.create_account("alice", credit=100)
    cluster.start_worker("node1")
    wait_for(lambda: online_nodes(admin) == 1, what="node1 online")
    with NetCut(address) as link:
        client = Client(f"{link.address},{address}", api_key=key)
        job = client.echo("slow", tasks=1, sleep_ms=5_000)
        waited: list[object] = []
        waiter = threading.Thread(target=lambda: waited.append(job.wait(timeout=90)))
        waiter.start()
        time.sleep(1)  # the watch is open through the link
        link.cut()
        cut = time.monotonic()
        waiter.join(60)
        took = time.monotonic() - cut
        assert not waiter.is_alive(), "the watch still waits on the dead link after 60 s"
    print(f"the job's end was heard {took:.1f}s after the cut")
    assert job.state == "succeeded"
    assert took < 45
