"""Two coordinators over one PostgreSQL database: one serves, the other stands by without
listening. Workers and clients are given both addresses. When the serving one is
SIGKILLed mid-job, the other takes over within seconds, the workers and the client follow
it, and the job finishes with every task paid once and the ledger balanced. Real
processes, a database of the test's own."""

import re
import shutil
import socket
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest

from sparegrid.sdk import AdminClient, Client
from sparegrid.wire import Signer
from tests.e2e.conftest import Cluster
from tests.e2e.helpers import node_payments, online_nodes, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.postgres, pytest.mark.timeout(240)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
    except OSError:
        return False
    return True


def test_a_standby_takes_over_a_killed_coordinator_and_the_job_finishes(
    cluster: Cluster, database: tuple[str, str], tmp_path: Path
) -> None:
    _, dsn = database
    first, second = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    cluster.address = first
    cluster.start_coordinator("--database", dsn)
    standby_dir = tmp_path / "coord-b"
    standby_dir.mkdir()
    # coordinators over one database share the key that countersigns results
    shutil.copy(tmp_path / "coord" / "coordinator.key", standby_dir / "coordinator.key")
    standby = cluster.spawn_coordinator("coordinator-b", standby_dir, second, "--database", dsn)
    wait_for(lambda: "standing by" in standby.tail(), what="the second coordinator standing by")
    assert "another coordinator is serving from the PostgreSQL database" in standby.tail()
    assert not listening(int(second.rpartition(":")[2]))  # clients stay with the first

    both = f"{first},{second}"
    cluster.address = both  # what the workers are given
    for name in ("node1", "node2"):
        cluster.start_worker(name, owner="volunteer")  # one owner: each task paid once
    with AdminClient(both, api_key=cluster.admin_key) as admin:
        _, key = admin.create_account("alice", credit=10_000)
        wait_for(lambda: online_nodes(admin) == 2, what="2 workers online")
    with Client(both, api_key=key) as client:
        job = client.echo("through a failover", tasks=60, sleep_ms=100)
        wait_for(lambda: job.refresh().counts.succeeded >= 10, timeout=60, what="10 tasks done")
        assert cluster.coordinator is not None
        killed = time.monotonic()
        cluster.kill(cluster.coordinator)  # SIGKILL
        wait_for(lambda: (standby_dir / "coordinator.addr").exists(), timeout=10, what="takeover")
        took_over = time.monotonic() - killed
        done = job.wait(timeout=150)
        assert done.state == "succeeded", (done.error, done.waiting)
        assert len(done.results()) == 60
        paid = node_payments(dsn, job.id)
        assert len(paid) == 60 and all(n == 1 for _, _, n in paid)  # each task paid once
        assert client.account().balance == 10_000 - sum(total for _, total, _ in paid)
    with AdminClient(both, api_key=cluster.admin_key) as admin:
        assert admin.ledger_check().balanced
        assert online_nodes(admin) == 2  # both workers followed it
    print(f"the standby served {took_over:.1f} s after the first coordinator was killed")
    assert standby.popen.poll() is None


def test_a_standby_without_the_serving_ones_key_says_so_at_once(
    cluster: Cluster, database: tuple[str, str], tmp_path: Path
) -> None:
    _, dsn = database
    cluster.start_coordinator("--database", dsn)
    standby_dir = tmp_path / "coord-b"

    def standby(name: str) -> str:
        proc = cluster.spawn_coordinator(name, standby_dir, "127.0.0.1:0", "--database", dsn)
        assert proc.popen.wait(timeout=60) == 1  # not standing by for a takeover it would fail
        return proc.tail()

    assert "needs its key: copy coordinator.key" in standby("no-key")
    assert not (standby_dir / "coordinator.key").exists()  # none made up in its place
    shutil.copy(tmp_path / "coord" / "coordinator.key", standby_dir / "coordinator.key")
    (standby_dir / "coordinator.key").chmod(0o644)
    assert "is readable by others (mode 644)" in standby("loose-key")
    # another coordinator's key: it would countersign what clients refuse
    (standby_dir / "coordinator.key").unlink()
    other = Signer.load_or_create(standby_dir / "coordinator.key")
    assert (
        other.public_key != Signer.load_or_create(tmp_path / "coord" / "coordinator.key").public_key
    )
    assert "but this database's coordinators countersign with" in standby("wrong-key")


def _scrape(address: str) -> tuple[str, httpx.Response]:
    """(/metrics' text, /ready's answer) of the metrics endpoint at HOST:PORT."""
    metrics = httpx.get(f"http://{address}/metrics", timeout=10)
    assert metrics.status_code == 200, metrics.text
    return metrics.text, httpx.get(f"http://{address}/ready", timeout=10)


def test_a_standby_answers_on_its_metrics_address_and_keeps_it_once_it_serves(
    database: tuple[str, str], cluster: Cluster, tmp_path: Path
) -> None:  # the database first: its coordinators stop before it is dropped
    _, dsn = database
    url = urlsplit(dsn)
    if url.password is None:  # a password the endpoints must not show (trust auth ignores it)
        where = url.netloc.rpartition("@")[2]
        url = url._replace(netloc=f"{url.username or 'postgres'}:pw-n0t-shown@{where}")
        dsn = urlunsplit(url)
    cluster.start_coordinator("--database", dsn, "--metrics-port", "0")
    serving = (tmp_path / "coord" / "metrics.addr").read_text().strip()
    text, ready = _scrape(serving)
    assert "sparegrid_coordinator_serving 1.0" in text
    assert 'sparegrid_coordinator_role{role="serving"} 1.0' in text
    assert ready.status_code == 200 and "serving from the PostgreSQL database" in ready.text

    standby_dir = tmp_path / "coord-b"
    standby_dir.mkdir()
    shutil.copy(tmp_path / "coord" / "coordinator.key", standby_dir / "coordinator.key")
    grpc = f"127.0.0.1:{free_port()}"
    standby = cluster.spawn_coordinator(
        "coordinator-b", standby_dir, grpc, "--database", dsn, "--metrics-port", "0"
    )
    found: list[str] = []

    def announced() -> bool:
        found[:] = re.findall(r"standby metrics on http://(\S+)", standby.tail())
        return bool(found)

    wait_for(announced, what="the standby's metrics endpoint")
    address = found[0]
    text, ready = _scrape(address)
    assert "sparegrid_coordinator_serving 0.0" in text
    assert 'sparegrid_coordinator_role{role="standby"} 1.0' in text
    assert "process_start_time_seconds" in text  # the process is alive: it stands by
    assert "sparegrid_queue_tasks" not in text  # it holds no queue
    assert ready.status_code == 503
    assert ready.text.startswith("standing by: another coordinator is serving from the ")
    assert f"{url.hostname}:{url.port or 5432}" in ready.text  # which database, ...
    assert url.password is not None and url.password not in ready.text + text  # ... no secret
    assert not listening(int(grpc.rpartition(":")[2]))  # still not on its gRPC address
    assert not (standby_dir / "metrics.addr").exists()  # the serving one's may be here

    third_dir = tmp_path / "coord-c"  # a third one given the second one's metrics port
    third_dir.mkdir()
    shutil.copy(tmp_path / "coord" / "coordinator.key", third_dir / "coordinator.key")
    port = address.rpartition(":")[2]
    third = cluster.spawn_coordinator(
        "coordinator-c", third_dir, "127.0.0.1:0", "--database", dsn, "--metrics-port", port
    )
    assert third.popen.wait(timeout=60) == 1  # at start, not when it would take over
    assert f"cannot serve the standby metrics on 127.0.0.1:{port}" in third.tail()

    assert cluster.coordinator is not None
    cluster.kill(cluster.coordinator)  # SIGKILL
    wait_for(lambda: (standby_dir / "coordinator.addr").exists(), timeout=10, what="takeover")
    text, ready = _scrape(address)  # the same address, now serving
    assert "sparegrid_coordinator_serving 1.0" in text
    assert 'sparegrid_coordinator_role{role="standby"} 0.0' in text
    assert "sparegrid_queue_tasks" in text
    assert ready.status_code == 200 and "serving from the PostgreSQL database" in ready.text
    assert (standby_dir / "metrics.addr").read_text().strip() == address
    assert standby.popen.poll() is None
