"""Commands given a list of coordinators (one serves, the others stand by, not listening)
find the keys recorded for whichever address of the list they were saved under: the
admin key and pinned coordinator key `coordinator serve` wrote for the address it serves
on, and the API key `account signup` saved. A real coordinator process on loopback."""

import json
import socket
import subprocess
from pathlib import Path

import pytest

from sparegrid.sdk import Client
from tests.e2e.conftest import Cluster
from tests.e2e.helpers import run_cli

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(env, *args, timeout=90)


def test_admin_commands_and_clients_find_their_keys_given_a_list(
    cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    cluster.address = first
    cluster.start_coordinator()
    both = f"{first},{second}"
    env = cluster.env

    checked = cli(env, "admin", "ledger", "check", "--coordinator", both)
    assert checked.returncode == 0, checked.stderr
    issued = cli(env, "admin", "invite", "create", "--coordinator", both, "--credit", "30")
    assert issued.returncode == 0, issued.stderr

    joined = cli(env, "account", "signup", "--coordinator", both, "--code", issued.stdout.strip())
    assert joined.returncode == 0, joined.stderr
    for order in (both, f"{second},{first}", first, second):  # the account is the grid's
        shown = cli(env, "account", "--coordinator", order, "--json")
        if order == second:  # nothing serves there: the key is found, the call fails
            assert "NO_API_KEY" not in shown.stderr and shown.returncode == 1
            continue
        assert shown.returncode == 0, (order, shown.stderr)
        assert json.loads(shown.stdout)["balance"] == 30

    key = Path(joined.stdout.strip()).read_text().strip()
    monkeypatch.setenv("XDG_CONFIG_HOME", env["XDG_CONFIG_HOME"])  # the CLI's config, here
    with Client(both, api_key=key) as client:
        pinned = client.coordinator_key()
    pins = tmp_path / "config" / "sparegrid" / "coordinators"
    for address in (first, second):  # the serving one's, and the standby's pinned now
        assert (pins / f"{address.replace(':', '_')}.pub").read_text().strip() == pinned.hex()
    assert not [p for p in (tmp_path / "config").rglob("*") if "," in p.name]


def test_a_list_where_nothing_answers_is_named_as_a_list(cluster: Cluster, tmp_path: Path) -> None:
    first, second = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    failed = cli(cluster.env, "admin", "ledger", "check", "--coordinator", f"{first},{second}")
    assert failed.returncode == 1
    text = " ".join(failed.stderr.split())
    assert "[NO_ADMIN_KEY]" in text
    admin = tmp_path / "config" / "sparegrid" / "admin"
    assert f"{admin / first.replace(':', '_')}.key or {admin / second.replace(':', '_')}" in text
    assert f"nothing answers at any of {first}, {second}: is the address" in text
