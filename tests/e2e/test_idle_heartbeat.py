"""A worker idle longer than a lease (heartbeating once every 5 s, the lease 3 s) is given a
task that runs longer than a lease: its heartbeats go back to every 0.5 s at once, so the
lease holds and the task succeeds on its one attempt. Real coordinator and worker processes."""

import time

import pytest

from tests.e2e.helpers import online_nodes, setup

pytestmark = pytest.mark.e2e


def test_a_task_given_after_an_idle_spell_keeps_its_lease(cluster) -> None:
    admin, client = setup(cluster, workers=1, extra=("--idle-heartbeat", "5"))
    time.sleep(6)  # idle: a heartbeat every 5 s, longer than the 3 s lease
    assert online_nodes(admin) == 1
    params = {"tasks": 1, "data": "after idling", "sleep_ms": 6000}
    done = client.submit("echo", params, max_attempts=1).wait(timeout=60)
    assert done.state == "succeeded", (done.error, done.waiting)  # one attempt, not reaped
    assert done.counts.succeeded == 1
