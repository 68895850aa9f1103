"""What admins change is recorded as `admin` events, in the transaction that changes it:
`sparegrid admin events --kind admin` is the operators' audit trail (SQLite, and
PostgreSQL when configured). A refused change records nothing, a grant or debit made again
with its idempotency key records nothing more, and no key or invitation code is ever in an
event."""

import asyncio
import json

from sparegrid.sdk import AdminClient
from sparegrid.wire import Signer
from tests.coordinator.conftest import Cli, Served
from tests.coordinator.sessions import session


async def audit(cli: Cli) -> list[dict[str, object]]:
    shown = await cli("admin", "events", "--kind", "admin", "--json", "--limit", "1000")
    assert shown.code == 0, shown.err
    return [json.loads(line) for line in shown.out.splitlines()]


async def test_every_change_an_admin_makes_names_the_admin(cli: Cli, served: Served) -> None:
    steps = [
        ("admin", "account", "create", "carol", "--credit", "5"),
        ("admin", "credit", "grant", "carol", "7", "--reason", "prize"),
        ("admin", "credit", "debit", "carol", "2", "--reason", "chargeback"),
        ("admin", "account", "disable", "carol"),
        ("admin", "account", "enable", "carol"),
        ("admin", "key", "rotate", "carol"),
        ("admin", "key", "revoke", "carol"),
        ("admin", "invite", "create", "--uses", "2", "--credit", "3"),
    ]
    shown = []
    for step in steps:
        done = await cli(*step)
        assert done.code == 0, (step, done.err)
        shown.append(done.out)
    invite = (await cli("admin", "invite", "list", "--json")).out
    invite_id = json.loads(invite)[0]["id"]
    assert (await cli("admin", "invite", "revoke", invite_id)).code == 0

    trail = await audit(cli)
    assert [e["data"]["action"] for e in trail] == [  # type: ignore[index]
        "account.create",
        "credit.grant",
        "credit.debit",
        "account.disable",
        "account.enable",
        "key.rotate",
        "key.revoke",
        "invite.create",
        "invite.revoke",
    ]
    assert {e["data"]["by"] for e in trail} == {"admin"}  # type: ignore[index]
    assert {e["account"] for e in trail} == {"admin"}
    assert [e["data"]["target"] for e in trail][:7] == ["carol"] * 7  # type: ignore[index]
    assert trail[-1]["data"]["target"] == invite_id  # type: ignore[index]
    assert trail[1]["message"] == "admin: granted 7 credit to 'carol' (prize)"
    assert trail[3]["message"] == "admin: disabled account 'carol'"
    # no secret is ever in the trail: the keys and the code printed once, none of them kept
    secrets = [line for out in shown for line in out.split() if line.startswith(("sg_", "sgi_"))]
    assert len(secrets) == 3
    text = json.dumps(trail)
    assert not any(secret in text for secret in secrets)
    everything = json.dumps([e.__dict__ for e in served.app.store.list_events(limit=10_000)])
    assert not any(secret in everything for secret in secrets)


async def test_a_refused_or_repeated_change_records_nothing(cli: Cli, served: Served) -> None:
    def grant_twice() -> None:
        with AdminClient(served.address, api_key=served.admin_key) as admin:
            for _ in range(2):
                admin.grant("alice", 5, idempotency_key="k1")
                admin.debit("alice", 1, idempotency_key="k2")

    await asyncio.to_thread(grant_twice)
    refused = [
        await cli("admin", "account", "create", "alice"),  # taken
        await cli("admin", "account", "disable", "nobody"),
        await cli("admin", "account", "disable", "admin"),  # the last admin
        await cli("admin", "credit", "debit", "alice", "999999999", "--reason", "x"),  # too much
        await cli("admin", "key", "revoke", "nobody"),
        await cli("admin", "invite", "revoke", "feedfeedfeed"),
    ]
    assert all(r.code == 1 for r in refused), [r.err for r in refused]
    trail = await audit(cli)
    assert [e["data"]["action"] for e in trail] == [  # type: ignore[index]
        "credit.grant",
        "credit.debit",
    ]


async def test_a_node_ban_and_a_job_cancel_name_the_admin(cli: Cli, served: Served) -> None:
    call, node_id = await session(served, Signer.generate())
    banned = await cli("admin", "node", "ban", node_id, "--reason", "cheats")
    assert banned.code == 0, banned.err
    assert (await cli("admin", "node", "reinstate", node_id)).code == 0
    call.cancel()
    submitted = await cli("job", "submit", "echo", "--data", "x", key=served.alice_key)
    assert submitted.code == 0, submitted.err
    job_id = served.app.store.list_jobs(None)[0].id
    assert (await cli("admin", "jobs", "cancel", job_id, "--reason", "abuse")).code == 0
    trail = await audit(cli)
    assert [(e["data"]["action"], e["data"]["target"]) for e in trail] == [  # type: ignore[index]
        ("node.ban", node_id),
        ("node.reinstate", node_id),
        ("job.cancel", job_id),
    ]
    assert trail[0]["message"] == f"admin: banned node {node_id} (cheats)"
    # the client's own view of its job (events by job id) shows no admin's name
    assert not [e for e in served.app.store.list_events(job_id=job_id) if e.kind == "admin"]


async def test_the_kind_filter_takes_a_kind_or_family_and_refuses_others(
    cli: Cli, served: Served
) -> None:
    assert (await cli("admin", "account", "create", "dave", "--credit", "1")).code == 0
    ledger = await cli("admin", "events", "--kind", "ledger", "--json")
    assert ledger.code == 0, ledger.err
    kinds = {json.loads(line)["kind"] for line in ledger.out.splitlines()}
    assert kinds == {"ledger"}
    typo = await cli("admin", "events", "--kind", "admn")
    assert typo.code == 1
    assert "[BAD_EVENT_KIND]" in typo.err and "no event kind is 'admn'" in typo.err
    assert "admin" in typo.err and "node" in typo.err  # it names what may be asked for


async def test_an_empty_filtered_listing_says_what_it_was_narrowed_to(
    cli: Cli, served: Served
) -> None:
    """`admin events --kind node` on a coordinator with events, none of them a node's,
    said "no events recorded yet", as if the coordinator had recorded nothing."""
    assert (await cli("admin", "account", "create", "erin", "--credit", "1")).code == 0
    none = await cli("admin", "events", "--kind", "node")
    assert none.code == 0
    assert "no events of kind 'node' among those kept" in none.err
    assert "recorded yet" not in none.err
    other = await cli("admin", "events", "--job", "0" * 32)
    assert f"no events of job {'0' * 32} among those kept" in other.err
