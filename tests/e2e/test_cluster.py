"""Whole-system tests: real coordinator and worker processes, driven through the SDK."""

import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.helpers import setup, wait_for

pytestmark = pytest.mark.e2e


def test_checksum_job_end_to_end(cluster, tmp_path: Path) -> None:
    admin, client = setup(cluster, workers=2)
    data = os.urandom(1 << 20)
    path = tmp_path / "file.bin"
    path.write_bytes(data)
    job = client.checksum(path, tasks=20)
    job = job.wait(timeout=60)
    assert job.state == "succeeded"
    results = job.results()
    assert len(results) == 20
    for r in sorted(results, key=lambda r: r.index):
        r.verify()
        lo, hi = r.index * len(data) // 20, (r.index + 1) * len(data) // 20
        assert r.output("sha256").decode() == hashlib.sha256(data[lo:hi]).hexdigest()
    assert job.verify().passed  # node signatures and the coordinator's countersignatures
    nodes = admin.nodes()
    # two new nodes of two owners: the adaptive policy cross-checks every result of each
    assert sum(n.tasks_succeeded for n in nodes) == 40
    assert sum(n.credit for n in nodes) == 40 == job.refresh().cost_spent
    assert client.account().balance == 1000 - 40
    assert admin.ledger_check().balanced


def test_worker_killed_mid_task_is_released_and_finished_elsewhere(cluster) -> None:
    admin, client = setup(cluster, workers=1)
    job = client.echo("slow", tasks=2, sleep_ms=4000)
    wait_for(lambda: client.get_job(job.id).counts.leased == 1, what="a task leased")
    victim = cluster.workers["node1"]
    cluster.kill(victim)
    cluster.start_worker("node2")
    job = job.wait(timeout=60)
    assert job.state == "succeeded"
    paid = {n.name: n.credit for n in admin.nodes()}
    assert paid.get("node2", 0) >= 1
    assert sum(paid.values()) == 2
    assert admin.ledger_check().balanced


def test_coordinator_killed_and_restarted_loses_nothing(cluster) -> None:
    admin, client = setup(cluster, workers=2)
    job = client.echo("x", tasks=60, sleep_ms=150)
    wait_for(lambda: client.get_job(job.id).counts.succeeded >= 5, what="some progress")
    cluster.kill(cluster.coordinator)
    cluster.start_coordinator()
    job = job.wait(timeout=90)
    assert job.state == "succeeded"
    assert job.counts.succeeded == 60
    results = job.results()
    assert {r.index for r in results} == set(range(60))
    for r in results:
        r.verify()
    assert job.verify().passed
    spent = job.refresh().cost_spent
    assert 60 < spent <= 120  # new nodes: most results were cross-checked, each check paid
    assert sum(n.credit for n in admin.nodes()) == spent
    assert client.account().balance == 1000 - spent
    report = admin.ledger_check()
    assert report.balanced, report.problems


def test_a_job_needing_more_owners_says_so_until_one_connects(cluster) -> None:
    _, client = setup(cluster, workers=2)  # each worker is its own owner
    job = client.submit("echo", {"tasks": 2, "data": "x"}, replicas=3, quorum=2)
    reason = "policy 2 of 3 needs results from 3 different owners; nodes of 2 owner(s)"
    wait_for(lambda: reason in client.get_job(job.id).waiting, what="the waiting reason")
    env = cluster.env | {
        "SPAREGRID_COORDINATOR": cluster.address,
        "SPAREGRID_API_KEY": client.connection.api_key,
        "COLUMNS": "200",
    }
    shown = subprocess.run(
        [sys.executable, "-m", "sparegrid.cli.main", "job", "get", job.id],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    assert "waiting" in shown.stdout and "3 different owners" in shown.stdout, shown.stdout
    cluster.start_worker("node3")
    job = job.wait(timeout=60)
    assert job.state == "succeeded", job.error
    assert job.waiting == ""


def test_worker_drains_on_sigterm(cluster) -> None:
    _, client = setup(cluster, workers=1)
    job = client.echo("x", tasks=1, sleep_ms=1500)
    wait_for(lambda: client.get_job(job.id).counts.leased == 1, what="the task leased")
    worker = cluster.workers["node1"]
    os.killpg(worker.popen.pid, signal.SIGTERM)
    assert worker.popen.wait(timeout=30) == 0
    assert client.get_job(job.id).state == "succeeded"
