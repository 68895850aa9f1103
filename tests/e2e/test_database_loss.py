"""A coordinator on PostgreSQL whose database connections are killed mid-job pauses
(health NOT_SERVING), reconnects by itself, serves again, and the job finishes with every
task paid once. Real coordinator and worker processes, a database of the test's own: only
that database's connections are ever terminated."""

import time
from urllib.parse import urlsplit

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.e2e.helpers import node_payments, setup, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def terminate(server: str, dsn: str) -> int:
    """Terminates the coordinator's connections to the test's database; how many."""
    import psycopg

    name = urlsplit(dsn).path.lstrip("/")
    with psycopg.connect(server, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s"
            " AND application_name = 'sparegrid-coordinator' AND pid <> pg_backend_pid()",
            (name,),
        ).fetchall()
    return len(rows)


def health(address: str) -> int:
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status


def test_killed_database_connections_pause_the_coordinator_and_the_job_finishes(
    cluster, database: tuple[str, str]
) -> None:
    server, dsn = database
    admin, client = setup(cluster, workers=1, extra=("--database", dsn))
    assert health(cluster.address) == SERVING
    job = client.echo("through a lost database", tasks=40, sleep_ms=100)
    wait_for(lambda: job.refresh().counts.succeeded >= 5, timeout=60, what="5 tasks done")
    seen: set[int] = set()
    deadline = time.monotonic() + 10  # the database is gone for 10 s: every reconnect is cut
    while time.monotonic() < deadline:
        terminate(server, dsn)
        seen.add(health(cluster.address))
        time.sleep(0.05)
    assert NOT_SERVING in seen
    wait_for(lambda: health(cluster.address) == SERVING, timeout=30, what="serving again")
    assert cluster.coordinator is not None and cluster.coordinator.popen.poll() is None
    assert "lost the database: lost the PostgreSQL database sparegrid_loss_" in (
        cluster.coordinator.log.read_text()
    )
    done = job.wait(timeout=120)
    assert done.state == "succeeded", (done.error, done.waiting)
    assert len(done.results()) == 40
    paid = node_payments(dsn, job.id)
    assert len(paid) == 40 and all(n == 1 for _, _, n in paid)  # each task paid once
    assert client.account().balance == 1000 - sum(total for _, total, _ in paid)
    assert admin.ledger_check().balanced
