"""A runaway render is killed and reported, and its frame is rendered elsewhere."""

import pytest

from sparegrid.sdk import AdminClient, Client
from tests.e2e.helpers import online_nodes, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


def failures(admin: AdminClient, name: str) -> int:
    return sum(n.tasks_failed for n in admin.nodes() if n.name == name)


def test_a_render_over_the_memory_limit_is_killed_and_retried_elsewhere(cluster, scenes) -> None:
    cluster.start_coordinator()
    healthy_env = dict(cluster.env)
    cluster.env["SPAREGRID_RENDER_MAX_MEMORY_MB"] = "1"  # every render is over it
    cluster.start_worker("leaky")
    cluster.env = healthy_env
    admin = AdminClient(cluster.address, api_key=cluster.admin_key)
    _, key = admin.create_account("artist", credit=10**6)
    wait_for(lambda: online_nodes(admin) == 1, what="the leaky worker online")
    with Client(cluster.address, api_key=key) as client:
        job = client.render(
            scenes / "anim.blend", frames=4, samples=4, resolution="48x36", max_attempts=5
        )
        # it fails the frame twice, then the coordinator keeps it away from this job
        wait_for(lambda: failures(admin, "leaky") >= 2, timeout=90, what="two killed renders")
        cluster.start_worker("healthy")
        job = job.wait(timeout=120)
        assert job.state == "succeeded", job.error
        (result,) = job.results()
        result.verify()
    assert [n.name for n in admin.nodes() if n.node_id == result.node_id] == ["healthy"]
    assert "over the node's limit of 1 MiB" in cluster.workers["leaky"].tail(200)
