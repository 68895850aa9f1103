"""Operator commands through `sparegrid admin ...` against a real coordinator (SQLite, and
PostgreSQL when configured): disabling accounts, rotating and revoking keys, debits, jobs of
every account, `--json` listings, and the minimum worker version. Each refusal names what
was wrong and changes nothing."""

import asyncio
import json
import logging
from pathlib import Path

import pytest

from sparegrid.sdk import Account, AdminClient, Client, JobSnapshot
from sparegrid.worker.testing.harness import make_config, running_worker, wait_until
from tests.coordinator.conftest import Cli, Served


def list_accounts(address: str, key: str) -> list[Account]:
    with AdminClient(address, api_key=key) as admin:
        return admin.list_accounts()


def echo(address: str, key: str, tasks: int) -> JobSnapshot:
    with Client(address, api_key=key) as client:
        return client.echo("x", tasks=tasks).snapshot


def served_key(served: Served) -> str:
    """A file holding alice's (not an admin's) key."""
    path = served.app.settings.data_dir / "alice.key"
    path.write_text(served.alice_key + "\n")
    return str(path)


def balances(served: Served) -> dict[str, int]:
    return served.app.store.balances("client:")


def ledger_size(served: Served) -> int:
    return served.app.ledger.check().entries


async def test_a_disabled_accounts_key_is_refused_until_enabled(cli: Cli, served: Served) -> None:
    assert (await cli("account", key=served.alice_key)).code == 0
    disabled = await cli("admin", "account", "disable", "alice")
    assert disabled.code == 0, disabled.err
    assert "its jobs run on" in disabled.err
    refused = await cli("job", "submit", "echo", "--data", "x", key=served.alice_key)
    assert refused.code == 1
    assert "[ACCOUNT_DISABLED]" in refused.err and "'alice' is disabled" in refused.err
    assert not served.app.store.list_jobs(None)  # nothing was submitted
    listed = json.loads((await cli("admin", "account", "list", "--json")).out)
    assert {a["name"]: a["disabled"] for a in listed} == {
        "admin": False,
        "alice": True,
        "bob": False,
    }
    assert (await cli("job", "list", key=served.bob_key)).code == 0  # others unaffected
    assert (await cli("admin", "account", "enable", "alice")).code == 0
    assert (await cli("job", "list", key=served.alice_key)).code == 0


async def test_account_commands_refuse_bad_input_and_change_nothing(
    cli: Cli, served: Served
) -> None:
    before = served.app.store.list_accounts()
    unknown = await cli("admin", "account", "disable", "nobody")
    assert unknown.code == 1 and "[ACCOUNT_NOT_FOUND]" in unknown.err
    assert "no account named 'nobody'" in unknown.err
    last = await cli("admin", "account", "disable", "admin")
    assert last.code == 1 and "[LAST_ADMIN]" in last.err
    assert "account create NAME --admin" in last.err
    not_admin = await cli("admin", "account", "disable", "bob", "--admin-key-file", "/dev/null")
    assert not_admin.code == 1
    assert served.app.store.list_accounts() == before


async def test_rotating_a_key_stops_the_old_one(cli: Cli, served: Served) -> None:
    rotated = await cli("admin", "key", "rotate", "alice")
    assert rotated.code == 0, rotated.err
    new_key = rotated.out.strip()
    assert new_key.startswith("sg_") and new_key != served.alice_key
    assert "shown only this once" in rotated.err
    old = await cli("account", key=served.alice_key)
    assert old.code == 1 and "[BAD_API_KEY]" in old.err
    shown = await cli("account", "--json", key=new_key)
    assert shown.code == 0 and json.loads(shown.out)["balance"] == 100
    unknown = await cli("admin", "key", "rotate", "nobody")
    assert unknown.code == 1 and "[ACCOUNT_NOT_FOUND]" in unknown.err


async def test_revoking_keys_and_the_last_admin_key(cli: Cli, served: Served) -> None:
    revoked = await cli("admin", "key", "revoke", "bob")
    assert revoked.code == 0, revoked.err
    refused = await cli("account", key=served.bob_key)
    assert refused.code == 1 and "[BAD_API_KEY]" in refused.err
    again = await cli("admin", "key", "revoke", "bob")
    assert again.code == 1 and "[NO_KEY]" in again.err and "key rotate bob" in again.err
    last = await cli("admin", "key", "revoke", "admin")
    assert last.code == 1 and "[LAST_ADMIN]" in last.err
    assert (await cli("admin", "account", "list")).code == 0  # the admin key still works
    # with a second admin, the first one's key may go
    _, second = served.app.accounts.create("ops", 0, is_admin=True)
    assert (await cli("admin", "key", "revoke", "admin")).code == 0
    assert (await cli("admin", "account", "list")).code == 1
    accounts = {a.name: a for a in await asyncio.to_thread(list_accounts, served.address, second)}
    assert not accounts["admin"].has_key and accounts["ops"].has_key


async def test_debit_keeps_the_ledger_balanced_and_refuses_beyond_the_balance(
    cli: Cli, served: Served
) -> None:
    debited = await cli("admin", "credit", "debit", "alice", "30", "--reason", "refund abuse")
    assert debited.code == 0, debited.err
    assert debited.out.strip() == "alice: -30 credit, balance 70"
    entries = json.loads((await cli("admin", "ledger", "entries", "--json")).out)["entries"]
    assert {(e["account"], e["amount"], e["reason"]) for e in entries[:2]} == {
        ("client:alice", -30, "refund abuse"),
        ("mint", 30, "refund abuse"),
    }
    size = ledger_size(served)
    for argv, code in [
        (("alice", "71"), "[INSUFFICIENT_CREDIT]"),
        (("alice", "-5"), "[BAD_AMOUNT]"),
        (("alice", "0"), "[BAD_AMOUNT]"),
        (("nobody", "5"), "[ACCOUNT_NOT_FOUND]"),
    ]:
        refused = await cli("admin", "credit", "debit", *argv, "--reason", "x")
        assert refused.code == 1 and code in refused.err, (argv, refused.err)
    beyond = await cli("admin", "credit", "debit", "alice", "71", "--reason", "x")
    assert "holds 70 credit" in beyond.err and "nothing was debited" in beyond.err
    assert balances(served)["client:alice"] == 70
    assert ledger_size(served) == size
    check = await cli("admin", "ledger", "check")
    assert check.code == 0 and "ledger balances" in check.out
    negative_grant = await cli("admin", "credit", "grant", "alice", "-50")
    assert negative_grant.code == 1 and "credit debit" in negative_grant.err


async def test_jobs_of_every_account_listed_and_cancelled(cli: Cli, served: Served) -> None:
    a = await asyncio.to_thread(echo, served.address, served.alice_key, 3)
    b = await asyncio.to_thread(echo, served.address, served.bob_key, 2)
    assert balances(served)["client:bob"] < 100  # held in escrow
    listed = json.loads((await cli("admin", "jobs", "list", "--json")).out)
    assert {(j["id"], j["owner"], j["state"]) for j in listed} == {
        (a.id, "alice", "queued"),
        (b.id, "bob", "queued"),
    }
    table = await cli("admin", "jobs", "list")
    assert "alice" in table.out and "bob" in table.out and b.id in table.out
    only = json.loads((await cli("admin", "jobs", "list", "--account", "bob", "--json")).out)
    assert [j["id"] for j in only] == [b.id]
    cancelled = await cli("admin", "jobs", "cancel", b.id, "--reason", "spam")
    assert cancelled.code == 0, cancelled.err
    assert f"job {b.id} of bob is cancelled: spam" in cancelled.out
    assert balances(served)["client:bob"] == 100  # the escrow came back
    states = json.loads((await cli("admin", "jobs", "list", "--state", "cancelled", "--json")).out)
    assert [j["id"] for j in states] == [b.id]
    # bad input: nothing changes
    again = await cli("admin", "jobs", "cancel", b.id)
    assert again.code == 1 and "[JOB_FINISHED]" in again.err
    unknown = await cli("admin", "jobs", "cancel", "no-such-job")
    assert unknown.code == 1 and "[JOB_NOT_FOUND]" in unknown.err
    nobody = await cli("admin", "jobs", "list", "--account", "nobody")
    assert nobody.code == 1 and "[ACCOUNT_NOT_FOUND]" in nobody.err
    not_admin = await cli("admin", "jobs", "cancel", a.id, "--admin-key-file", served_key(served))
    assert not_admin.code == 1 and "[NOT_ADMIN]" in not_admin.err
    assert served.app.jobs.get_any(a.id).state.value == "queued"
    mine = json.loads((await cli("job", "list", "--json", key=served.alice_key)).out)
    assert [j["id"] for j in mine] == [a.id]  # a client still sees only its own jobs
    one = json.loads((await cli("job", "get", a.id, "--json", key=served.alice_key)).out)
    assert (one["job"]["id"], one["job"]["counts"]["total"], one["disputes"]) == (a.id, 3, [])
    theirs = await cli("job", "get", b.id, "--json", key=served.alice_key)
    assert theirs.code == 1 and "[JOB_NOT_FOUND]" in theirs.err
    assert (await cli("admin", "ledger", "check")).code == 0


async def test_listings_print_json(cli: Cli, served: Served) -> None:
    nodes = await cli("admin", "nodes", "--json")
    assert nodes.code == 0 and json.loads(nodes.out) == []
    entries = json.loads((await cli("admin", "ledger", "entries", "--json")).out)
    assert {e["account"] for e in entries["entries"]} >= {"client:alice", "client:bob"}
    assert entries["disputes"] == []


async def test_an_old_worker_is_refused_and_its_log_says_why(
    served: Served, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    served.app.settings.min_worker_version = "99.0"
    caplog.set_level(logging.INFO)
    config = make_config(tmp_path / "w", served.address)
    async with running_worker(config):
        await wait_until(lambda: "refuses this worker" in caplog.text)
    assert not served.app.scheduler.sessions  # never connected
    line = next(r for r in caplog.records if "refuses this worker" in r.getMessage())
    assert line.levelno == logging.ERROR
    assert "needs sparegrid 99.0 or newer" in line.getMessage()
    assert "pip install -U sparegrid" in line.getMessage()
    caplog.clear()
    served.app.settings.min_worker_version = "0.1"
    async with running_worker(config):
        await wait_until(lambda: bool(served.app.scheduler.sessions))


async def test_a_node_started_with_another_owners_key_is_refused_and_its_log_says_what_to_do(
    served: Served, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    alices = make_config(tmp_path / "w", served.address, owner_key=served.alice_key)
    async with running_worker(alices):
        await wait_until(lambda: bool(served.app.scheduler.sessions))
    await wait_until(lambda: not served.app.scheduler.sessions)
    bobs = make_config(tmp_path / "w", served.address, owner_key=served.bob_key)  # same key
    async with running_worker(bobs):
        await wait_until(lambda: "refuses this worker" in caplog.text)
    assert not served.app.scheduler.sessions
    line = next(r for r in caplog.records if "refuses this worker" in r.getMessage())
    assert line.levelno == logging.ERROR
    assert "--data-dir" in line.getMessage() and "SPAREGRID_OWNER_KEY" in line.getMessage()


async def test_a_disabled_owners_nodes_are_cut_off_and_refused(
    cli: Cli, served: Served, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    config = make_config(tmp_path / "w", served.address, owner_key=served.alice_key)
    async with running_worker(config):
        await wait_until(lambda: bool(served.app.scheduler.sessions))
        assert (await cli("admin", "account", "disable", "alice")).code == 0
        await wait_until(lambda: "ACCOUNT_DISABLED" in caplog.text or "is disabled" in caplog.text)
        await asyncio.sleep(0.5)  # it keeps trying, and keeps being refused
        assert not served.app.scheduler.sessions
        assert (await cli("admin", "account", "enable", "alice")).code == 0
        await wait_until(lambda: bool(served.app.scheduler.sessions))
