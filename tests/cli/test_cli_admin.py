"""`sparegrid admin ...` against the fake coordinator, and where the admin key comes from."""

from pathlib import Path

import pytest

from sparegrid.cli.admin import task_label
from sparegrid.sdk import LedgerEntry
from sparegrid.sdk.config import admin_key_path
from tests.cli.conftest import Cli, FakeGrid

ADMIN_KEY = "admin-key"  # FakeCoordinator's default


def record_key(address: str, key: str) -> Path:
    """What `coordinator serve` does: the key under $XDG_CONFIG_HOME/sparegrid/admin/."""
    path = admin_key_path(address)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(key + "\n")
    return path


async def test_admin_key_lookup_order(
    cli: Cli, grid: FakeGrid, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    none = await cli("admin", "nodes")
    assert none.code == 1
    for option in (
        "--admin-key-file PATH",
        "SPAREGRID_ADMIN_KEY",
        "_".join(grid.address.split(":")),
    ):
        assert option in none.err
    record_key(grid.address, ADMIN_KEY)
    assert (await cli("admin", "nodes")).code == 0  # the recorded file alone
    monkeypatch.setenv("SPAREGRID_ADMIN_KEY", "wrong")
    env_wins = await cli("admin", "nodes")
    assert env_wins.code == 1
    assert "[BAD_API_KEY]" in env_wins.err  # the environment beats the recorded file
    # the error line names the admin key too, not the coordinator's "check SPAREGRID_API_KEY"
    assert env_wins.err.startswith("error: the admin key is not known to this coordinator")
    # the hint is about the admin key, not $SPAREGRID_API_KEY or making an account
    assert "does not know the admin key" in env_wins.err
    assert "admin account create" not in env_wins.err
    key_file = tmp_path / "admin.key"
    key_file.write_text(ADMIN_KEY + "\n")
    assert (await cli("admin", "nodes", "--admin-key-file", str(key_file))).code == 0


async def test_recorded_key_follows_the_target_address(
    cli: Cli, grid: FakeGrid, monkeypatch: pytest.MonkeyPatch
) -> None:
    record_key("127.0.0.1:1", ADMIN_KEY)
    result = await cli("admin", "nodes")
    assert result.code == 1
    assert "NO_ADMIN_KEY" in result.err


async def test_account_create_prints_only_the_key(
    cli: Cli, grid: FakeGrid, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SPAREGRID_ADMIN_KEY", ADMIN_KEY)
    result = await cli("admin", "account", "create", "bob", "--credit", "50")
    assert result.code == 0
    key = result.out.strip()
    assert result.out == key + "\n"
    assert grid.coordinator.keys[key] == "bob"
    assert "shown only this once" in result.err
    again = await cli("admin", "account", "create", "bob")
    assert again.code == 1
    assert "[ACCOUNT_EXISTS]" in again.err


async def test_account_list_grant_nodes_and_ledger(
    cli: Cli, grid: FakeGrid, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SPAREGRID_ADMIN_KEY", ADMIN_KEY)
    assert (await cli("job", "submit", "echo", "--tasks", "2", "--wait")).code == 0
    accounts = await cli("admin", "account", "list")
    assert "alice" in accounts.out
    granted = await cli("admin", "credit", "grant", "alice", "25", "--reason", "bonus")
    assert granted.out.strip() == "alice: +25 credit, balance 1023"
    nodes = await cli("admin", "nodes")
    assert grid.coordinator.signer.node_id in nodes.out
    assert "fake-node" in nodes.out
    check = await cli("admin", "ledger", "check")
    assert check.code == 0
    assert check.out.strip() == "ledger balances: 4 transactions, 8 entries, sum 0"
    entries = await cli("admin", "ledger", "entries", "--account", "alice")
    assert "+25" in entries.out
    assert "-2" in entries.out
    assert all(line == line.rstrip() for line in entries.out.splitlines())


async def test_empty_listings_say_so(
    cli: Cli, grid: FakeGrid, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SPAREGRID_ADMIN_KEY", ADMIN_KEY)
    entries = await cli("admin", "ledger", "entries", "--job", "nothing-here")
    assert (entries.code, entries.out) == (0, "")
    assert "no ledger entries match" in entries.err


async def test_piped_ledger_entries_keep_whole_ids(
    cli: Cli, grid: FakeGrid, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SPAREGRID_ADMIN_KEY", ADMIN_KEY)
    monkeypatch.setenv("COLUMNS", "80")  # a narrow terminal's width must not cut piped ids
    job_id = (await cli("job", "submit", "echo", "--tasks", "2", "--wait")).out.split()[0]
    long_job = "0123456789abcdef0123456789abcdef"
    grid.coordinator._post("tx-long", long_job, (f"escrow:{long_job}", 1, "accepted result"))
    entries = await cli("admin", "ledger", "entries")
    assert entries.code == 0
    assert "…" not in entries.out
    assert f"escrow:{long_job}" in entries.out
    assert job_id in entries.out


def test_task_label_is_the_index_within_its_job() -> None:
    entry = LedgerEntry("tx", "node:n", 1, "accepted result", job_id="j1", task_id="j1-17")
    assert task_label(entry) == "17"
    assert task_label(LedgerEntry("tx", "a", 1, "r", job_id="j1", task_id="other")) == "other"
    assert task_label(LedgerEntry("tx", "a", 1, "grant")) == "-"


async def test_unbalanced_ledger_exits_1(
    cli: Cli, grid: FakeGrid, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SPAREGRID_ADMIN_KEY", ADMIN_KEY)
    grid.coordinator._post("tx-bad", "", ("alice", 5, "free money"))
    check = await cli("admin", "ledger", "check")
    assert check.code == 1
    assert "ledger does not balance" in check.err
    assert "entries sum to 5, not 0" in check.out


async def test_not_admin(cli: Cli, grid: FakeGrid, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPAREGRID_ADMIN_KEY", grid.api_key)
    result = await cli("admin", "account", "list")
    assert result.code == 1
    assert "[NOT_ADMIN]" in result.err
    assert "hint: use the admin key `coordinator serve` wrote" in result.err


async def test_markup_in_names_is_shown_as_typed(
    cli: Cli, grid: FakeGrid, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SPAREGRID_ADMIN_KEY", ADMIN_KEY)
    created = await cli("admin", "account", "create", "[bold]x")
    assert created.code == 0
    assert "created account '[bold]x'" in created.err
    listed = await cli("admin", "account", "list")
    assert "[bold]x" in listed.out
