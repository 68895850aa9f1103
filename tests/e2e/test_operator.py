"""An operator's first steps on a real coordinator process: the admin commands and the
pinned key found at the address this machine reaches the coordinator at, whatever address
it listens on, and a data directory other users cannot read."""

import shutil
import signal
import socket
import stat
import time
import urllib.request
from pathlib import Path

import pytest

from sparegrid.coordinator.cli import STANDBY_POLL_SECONDS
from sparegrid.sdk import AdminClient, Client
from tests.coordinator.certs import self_signed
from tests.e2e.conftest import Cluster
from tests.e2e.helpers import run_cli, wait_for

pytestmark = pytest.mark.e2e


def test_a_coordinator_on_every_address_is_administered_at_loopback(cluster: Cluster) -> None:
    """`--listen 0.0.0.0:50051`, the usual way to let workers of other machines in, recorded
    the admin key under 0.0.0.0 only: `sparegrid admin ...` (127.0.0.1:50051 by default)
    then failed with NO_ADMIN_KEY on the coordinator's own machine."""
    cluster.address = "0.0.0.0:0"
    address = cluster.start_coordinator()
    port = address.rpartition(":")[2]
    local = f"127.0.0.1:{port}"
    env = cluster.env | {"SPAREGRID_COORDINATOR": local}
    made = run_cli(env, "admin", "account", "create", "alice", "--credit", "10")
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    listed = run_cli(env | {"SPAREGRID_API_KEY": key}, "job", "list")
    assert listed.returncode == 0, listed.stderr
    pins = cluster.root / "config" / "sparegrid" / "coordinators"
    assert (pins / f"127.0.0.1_{port}.pub").read_text() == (
        pins / f"0.0.0.0_{port}.pub"
    ).read_text()
    # the data directory holds every client's jobs and blobs: no other user reads it
    assert stat.S_IMODE((cluster.root / "coord").stat().st_mode) == 0o700


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback here")
def test_an_ipv6_coordinator_writes_an_address_clients_can_use(cluster: Cluster) -> None:
    """`--listen [::1]:PORT` wrote `::1:PORT` to coordinator.addr and its log: given to a
    command, that failed with "Misformatted domain name". metrics.addr and web.addr, and
    the log's URLs (http://::1:PORT), were no address curl takes either."""
    cluster.address = "[::1]:0"
    on_v6 = ("--metrics-addr", "::1", "--metrics-port", "0", "--web-addr", "::1", "--web-port", "0")
    address = cluster.start_coordinator(*on_v6)
    assert address.startswith("[::1]:")
    log = Path(cluster.root / "coordinator.log")
    wait_for(lambda: f"serving on {address} (plaintext)" in log.read_text(), what="its log line")
    nodes = run_cli(cluster.env, "admin", "nodes", "--coordinator", address)
    assert nodes.returncode == 0, nodes.stderr
    assert "no node has connected yet" in nodes.stdout + nodes.stderr
    wrong = run_cli(cluster.env, "admin", "nodes", "--coordinator", "127.0.0.1:1")
    assert f"recorded admin keys for: {address}" in wrong.stderr  # as --coordinator takes it
    for name, path in (("metrics", "/metrics"), ("web", "/login")):
        at = (cluster.root / "coord" / f"{name}.addr").read_text().strip()
        assert at.startswith("[::1]:")
        with urllib.request.urlopen(f"http://{at}{path}", timeout=10) as response:
            assert response.status == 200


def test_a_second_coordinator_on_one_sqlite_file_stops_at_start(cluster: Cluster) -> None:
    """`coordinator serve` run again on a data directory already served (another port, a
    second unit, a restore test gone wrong) served beside the first: two coordinators, each
    leasing the same queued tasks from its own memory. Now the second one stops at start,
    naming the first one's process, and the first goes on serving."""
    address = cluster.start_coordinator()
    first = cluster.coordinator
    assert first is not None
    second = run_cli(
        cluster.env,
        "coordinator",
        "serve",
        "--data-dir",
        str(cluster.root / "coord"),
        "--listen",
        "127.0.0.1:0",
        timeout=60,
    )
    assert second.returncode == 1
    assert f"another coordinator (process {first.popen.pid}) is serving from" in second.stderr
    assert "SQLite takes one coordinator per file" in second.stderr
    assert (cluster.root / "coord" / "coordinator.addr").read_text().strip() == address
    env = cluster.env | {"SPAREGRID_COORDINATOR": address}
    assert run_cli(env, "admin", "ledger", "check").returncode == 0


@pytest.mark.postgres
def test_a_standby_says_once_what_its_own_blob_folder_would_lose(
    cluster: Cluster, database: tuple[str, str], tmp_path: Path
) -> None:
    """The README's standby, given copies of the keys and its own data directory, kept
    blobs there: after a takeover every task whose input went to the other coordinator
    failed INPUT_UNAVAILABLE and its job stalled, with no word at start. Now the standby
    says so once, as it says once that others can read its data directory, and when it
    takes over it fails the unfinished jobs whose inputs it lacks, at once and naming
    the blob (they stalled until the wait limit), their held credit refunded."""
    _, dsn = database
    cluster.start_coordinator("--database", dsn)
    standby_dir = tmp_path / "coord-b"
    standby_dir.mkdir(mode=0o755)
    standby_dir.chmod(0o755)
    shutil.copy(tmp_path / "coord" / "coordinator.key", standby_dir / "coordinator.key")
    for name in ("coordinator.addr", "metrics.addr", "web.addr"):  # left by an earlier run
        (standby_dir / name).write_text("127.0.0.1:1\n")
    standby = cluster.spawn_coordinator(
        "coordinator-b", standby_dir, "127.0.0.1:0", "--database", dsn
    )
    wait_for(lambda: "standing by" in standby.tail(), what="the second coordinator standing by")
    time.sleep(3 * STANDBY_POLL_SECONDS)  # it tries for the lock every second meanwhile
    log = standby.log.read_text()
    assert log.count("give every coordinator of this database the same --blobs s3://") == 1
    assert "inputs and outputs uploaded to the other are missing" in log
    assert log.count("is readable by other users (mode 755)") == 1
    # given no admin.key, it says so now, while it can still be copied, not at the takeover
    assert log.count(f"{standby_dir / 'admin.key'} is missing: once this one serves") == 1
    assert standby.popen.poll() is None
    # and when it takes over, it fails the jobs whose inputs it lacks
    data = tmp_path / "input.bin"
    data.write_bytes(bytes(range(256)) * 64)
    with AdminClient(cluster.address, api_key=cluster.admin_key) as admin:
        _, key = admin.create_account("alice", credit=1000)
    with Client(cluster.address, api_key=key) as client:
        job = client.checksum(data, tasks=4)  # no worker: it stays queued
        assert client.account().held > 0
    assert cluster.coordinator is not None
    cluster.kill(cluster.coordinator)  # SIGKILL
    wait_for(lambda: "coordinator serving on" in standby.log.read_text(), what="the takeover")
    wait_for(lambda: job.id in standby.log.read_text(), what="the missing inputs named")
    # what the earlier run left is gone: it serves no metrics, nor at 127.0.0.1:1
    assert sorted(p.name for p in standby_dir.iterdir() if p.suffix == ".addr") == [
        "coordinator.addr"
    ]
    assert (standby_dir / "coordinator.addr").read_text().strip() != "127.0.0.1:1"
    assert f"admin key: none ({standby_dir / 'admin.key'} is missing)" in standby.log.read_text()
    assert "failed 1 unfinished job(s) whose inputs are not in" in standby.log.read_text()
    address = (standby_dir / "coordinator.addr").read_text().strip()
    with Client(address, api_key=key) as client:
        ended = client.get_job(job.id).snapshot
        assert ended.state == "failed", ended
        assert ended.error.startswith("INPUT_UNAVAILABLE: input 'data' (blob ")
        account = client.account()  # no task ran: nothing spent, nothing held
        assert (account.balance, account.held) == (1000, 0)
    env = cluster.env | {"SPAREGRID_COORDINATOR": address, "SPAREGRID_ADMIN_KEY": cluster.admin_key}
    checked = run_cli(env, "admin", "ledger", "check")
    assert checked.returncode == 0, checked.stderr


def test_rotating_the_admins_own_key_keeps_admin_commands_working(cluster: Cluster) -> None:
    """`sparegrid admin key rotate admin` printed a new key, and from then on every admin
    command failed with BAD_API_KEY: they read the old key `coordinator serve` recorded,
    and a restarted coordinator recorded the old DATA_DIR/admin.key again. Now the command
    saves the new key where it read the old one, and a coordinator whose admin.key went
    stale says so and leaves the recorded key alone."""
    address = cluster.start_coordinator()
    env = cluster.env | {"SPAREGRID_COORDINATOR": address}
    rotated = run_cli(env, "admin", "key", "rotate", "admin")
    assert rotated.returncode == 0, rotated.stderr
    new_key = rotated.stdout.strip()
    recorded = cluster.root / "config" / "sparegrid" / "admin" / f"{address.replace(':', '_')}.key"
    assert f"saved it in {recorded}, where admin commands read the admin key" in rotated.stderr
    assert recorded.read_text().strip() == new_key
    assert stat.S_IMODE(recorded.stat().st_mode) == 0o600
    assert run_cli(env, "admin", "nodes").returncode == 0
    assert cluster.coordinator is not None
    cluster.kill(cluster.coordinator, signal.SIGTERM)
    cluster.start_coordinator()  # same data directory, same address
    assert run_cli(env, "admin", "nodes").returncode == 0
    log = cluster.root / "coordinator.log"
    wait_for(lambda: "no longer opens an admin account" in log.read_text(), what="the warning")
    # another account's key: shown once, nothing saved
    made = run_cli(env, "admin", "account", "create", "bob")
    other = run_cli(env, "admin", "key", "rotate", "bob")
    assert made.returncode == other.returncode == 0
    assert "shown only this once" in other.stderr and "saved it" not in other.stderr
    assert recorded.read_text().strip() == new_key


def test_a_swapped_tls_pair_is_named_not_blamed_on_the_address(
    cluster: Cluster, tmp_path: Path
) -> None:
    """`--tls-cert privkey.pem --tls-key fullchain.pem` (or a missing file) stopped the
    start with "cannot listen on ...: the address is in use (another coordinator?)", or a
    bare "[Errno 2] No such file"; now the flags and files are named, before anything is
    opened, and a key others can read is warned about."""
    cert, key = self_signed(tmp_path)
    data = tmp_path / "coord"
    serve = ("coordinator", "serve", "--data-dir", str(data), "--listen", "127.0.0.1:0")
    swapped = run_cli(cluster.env, *serve, "--tls-cert", str(key), "--tls-key", str(cert))
    assert swapped.returncode == 1
    assert f"--tls-cert {key} and --tls-key {cert} do not load" in swapped.stderr
    assert "are they swapped, or not a pair?" in swapped.stderr
    assert "address is in use" not in swapped.stderr
    assert not (data / "coordinator.db").exists()
    missing = run_cli(cluster.env, *serve, "--tls-cert", str(cert), "--tls-key", "nosuch.pem")
    assert missing.returncode == 1 and "--tls-key nosuch.pem: no such file" in missing.stderr
    key.chmod(0o644)
    cluster.address = "127.0.0.1:0"
    cluster.start_coordinator("--tls-cert", str(cert), "--tls-key", str(key))
    log = cluster.root / "coordinator.log"
    assert f"{key}, the TLS private key, is readable by others (mode 644)" in log.read_text()
