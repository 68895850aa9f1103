"""Starting a cluster of real processes and waiting on it, for the end-to-end tests."""

import subprocess
import sys
import time
from collections.abc import Mapping

from sparegrid.sdk import AdminClient, Client


def wait_for(predicate, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def online_nodes(admin: AdminClient) -> int:
    return sum(1 for n in admin.nodes() if n.state == "online")


def setup(
    cluster, workers: int, credit: int = 1000, extra: tuple[str, ...] = ()
) -> tuple[AdminClient, Client]:
    cluster.start_coordinator(*extra)
    for i in range(workers):
        cluster.start_worker(f"node{i + 1}")
    admin = AdminClient(cluster.address, api_key=cluster.admin_key)
    _, key = admin.create_account("alice", credit=credit)
    wait_for(lambda: online_nodes(admin) == workers, what=f"{workers} workers online")
    return admin, Client(cluster.address, api_key=key)


def run_cli(
    env: Mapping[str, str], *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """`sparegrid ARGS` as a user runs it: a separate process with `env`."""
    return subprocess.run(
        [sys.executable, "-m", "sparegrid.cli.main", *args],
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def client_env(cluster, key: str) -> dict[str, str]:
    """The cluster's environment with its coordinator and a client's API key set."""
    return cluster.env | {"SPAREGRID_COORDINATOR": cluster.address, "SPAREGRID_API_KEY": key}


def node_payments(dsn: str, job_id: str) -> list[tuple[str, int, int]]:
    """(task id, credits to node accounts, how many such entries) per task of the job."""
    import psycopg

    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT task_id, SUM(amount), COUNT(*) FROM entries WHERE job_id = %s"
            " AND account LIKE 'node:%%' AND amount > 0 GROUP BY task_id",
            (job_id,),
        ).fetchall()
    return [(task_id, int(total), int(n)) for task_id, total, n in rows]
