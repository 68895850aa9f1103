"""The volunteer's path with real processes: the operator issues an invitation code, the
volunteer signs up with it on their own machine (their own config folder), and their
worker proves it belongs to the new account with the key the signup saved."""

import json
import subprocess
from pathlib import Path

import pytest

from sparegrid.sdk import AdminClient
from tests.e2e.conftest import Cluster
from tests.e2e.helpers import run_cli, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(env, *args, timeout=90)


def test_a_volunteer_signs_up_and_their_worker_works_for_their_account(
    cluster: Cluster, tmp_path: Path
) -> None:
    address = cluster.start_coordinator()
    issued = cli(
        cluster.env, "admin", "invite", "create", "--coordinator", address, "--credit", "30"
    )
    assert issued.returncode == 0, issued.stderr
    code = issued.stdout.strip()

    volunteer = {**cluster.env, "XDG_CONFIG_HOME": str(tmp_path / "volunteer-config")}
    joined = cli(
        volunteer, "account", "signup", "--coordinator", address, "--code", code, "--name", "vol"
    )
    assert joined.returncode == 0, joined.stderr
    key_file = Path(joined.stdout.strip())
    assert key_file.is_relative_to(tmp_path / "volunteer-config")
    shown = cli(volunteer, "account", "--coordinator", address, "--json")
    assert shown.returncode == 0, shown.stderr
    assert (json.loads(shown.stdout)["name"], json.loads(shown.stdout)["balance"]) == ("vol", 30)

    cluster.spawn(
        "vol-node",
        "worker",
        "run",
        "--coordinator",
        address,
        "--data-dir",
        str(tmp_path / "vol-node"),
        "--name",
        "vol-node",
        "--owner-key-file",
        str(key_file),
        "--devices",
        "cpu",
        env={"XDG_CONFIG_HOME": volunteer["XDG_CONFIG_HOME"]},
    )
    with AdminClient(address, api_key=cluster.admin_key) as admin:
        wait_for(
            lambda: any(n.owner == "vol" and n.state == "online" for n in admin.nodes()),
            what="the volunteer's node online, owned by their account",
        )
        again = cli(volunteer, "account", "signup", "--coordinator", address, "--code", code)
        assert again.returncode == 1 and "[KEY_SAVED]" in again.stderr
        (invite,) = admin.invites()
        assert (invite.used, invite.uses) == (1, 1)
        assert admin.ledger_check().balanced
