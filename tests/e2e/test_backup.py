"""Backup under load and restore, with real processes: a backup taken while jobs run and
submits keep coming restores into a fresh directory, where a new coordinator starts with
the same keys, the jobs, the blobs, and a ledger that balances."""

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from sparegrid.sdk import AdminClient, Client
from tests.e2e.conftest import START_TIMEOUT, Cluster
from tests.e2e.helpers import setup, wait_for

pytestmark = pytest.mark.e2e


def sparegrid(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sparegrid.cli.main", *args],
        env=cluster.env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def start_on(cluster: Cluster, data: Path) -> str:
    """A second coordinator on `data`, on a free port; its address."""
    proc = cluster.spawn(
        "restored", "coordinator", "serve", "--listen", "127.0.0.1:0", "--data-dir", str(data)
    )
    addr = data / "coordinator.addr"
    deadline = time.monotonic() + START_TIMEOUT
    while not addr.exists():
        assert proc.popen.poll() is None and time.monotonic() < deadline, proc.tail()
        time.sleep(0.05)
    return addr.read_text().strip()


def test_a_backup_taken_under_load_restores_and_balances(cluster: Cluster, tmp_path: Path) -> None:
    admin, client = setup(cluster, workers=2, credit=100_000)
    data = tmp_path / "input.bin"
    data.write_bytes(os.urandom(256 << 10))
    digest = client.upload(data)
    first = client.checksum(data, tasks=8).wait(timeout=60)
    assert first.state == "succeeded"
    stop = threading.Event()
    submitted: list[str] = []

    def load() -> None:  # submits keep coming while the backup runs
        with Client(cluster.address, api_key=client.connection.api_key) as c:
            while not stop.is_set():
                submitted.append(c.echo("x", tasks=20, sleep_ms=20).id)

    thread = threading.Thread(target=load)
    thread.start()
    try:
        wait_for(lambda: len(submitted) >= 3, what="jobs submitted")
        backup = tmp_path / "backup"
        taken = sparegrid(
            cluster, "coordinator", "backup", str(backup), "--data-dir", str(cluster.root / "coord")
        )
        assert taken.returncode == 0, taken.stdout + taken.stderr
        assert "backed up" in taken.stdout
    finally:
        stop.set()
        thread.join(timeout=30)
    assert (backup / "coordinator.key").stat().st_mode & 0o777 == 0o600
    assert (backup / "blobs" / "sha256" / digest[:2] / digest).read_bytes() == data.read_bytes()

    fresh = tmp_path / "fresh"
    restored = sparegrid(cluster, "coordinator", "restore", str(backup), "--data-dir", str(fresh))
    assert restored.returncode == 0, restored.stdout + restored.stderr
    address = start_on(cluster, fresh)
    admin_key = (fresh / "admin.key").read_text().strip()
    with AdminClient(address, api_key=admin_key) as restored_admin:
        check = restored_admin.ledger_check()
        assert check.balanced, check.problems
        assert check.transactions > 0
        names = {a.name for a in restored_admin.list_accounts()}
        jobs = {j.id for j in restored_admin.all_jobs(limit=1000)}
    assert {"admin", "alice"} <= names
    assert first.id in jobs and len(jobs & set(submitted)) >= 3
    with Client(address, api_key=client.connection.api_key) as restored_client:
        # the same countersigning key, so receipts verify as before; the blob came along
        assert restored_client.info().coordinator_key == client.info().coordinator_key
        assert restored_client.get_job(first.id).state == "succeeded"
        out = tmp_path / "download.bin"
        restored_client.download(digest, out)
        assert out.read_bytes() == data.read_bytes()
    ledger = sparegrid(
        cluster,
        "admin",
        "ledger",
        "check",
        "--coordinator",
        address,
        "--admin-key-file",
        str(fresh / "admin.key"),
    )
    assert ledger.returncode == 0 and "ledger balances" in ledger.stdout
    admin.close()
    client.close()
