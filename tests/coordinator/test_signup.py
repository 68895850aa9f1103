"""Self-service accounts with invitation codes, over real gRPC on SQLite (and PostgreSQL
when configured): the operator issues, lists and revokes codes; whoever holds one signs up
through the SDK or `sparegrid account signup`, which saves the key where the other
commands find it. Each refusal says what was wrong and changes nothing; a one-use code
raced by two signups lets exactly one through; signups are rate-limited per address."""

import asyncio
import hashlib
import io
import os
import stat
import time

import grpc
import pytest
from google.protobuf import message_factory
from grpc import aio

from sparegrid.coordinator.domain import Invite
from sparegrid.coordinator.rpc.auth import KEYLESS, peer_address
from sparegrid.coordinator.services.canaries import CANARY_ACCOUNT
from sparegrid.coordinator.services.invites import RESERVED_PREFIX, SignupConfig, SignupLimiter
from sparegrid.coordinator.store.base import Store
from sparegrid.sdk import AsyncAdminClient, AsyncClient, SparegridError
from sparegrid.sdk.aio import signup
from sparegrid.sdk.config import api_key_path
from sparegrid.v1 import admin_pb2, blob_pb2, client_pb2
from sparegrid.wire.clock import FakeClock
from tests.coordinator.conftest import Cli, Served


def admin(served: Served) -> AsyncAdminClient:
    return AsyncAdminClient(served.address, api_key=served.admin_key)


def snapshot(store: Store) -> tuple[object, ...]:
    """What a refused signup must leave as it was."""
    return (
        [a.name for a in store.list_accounts()],
        [(i.id, i.used, i.revoked) for i in store.list_invites()],
        store.ledger_totals(),
        len(store.list_events(limit=10_000)),
    )


async def refused(served: Served, code: str, name: str = "") -> SparegridError:
    with pytest.raises(SparegridError) as err:
        await signup(served.address, code, name)
    return err.value


async def test_a_code_signs_up_an_account_with_its_credit_through_the_ledger(
    served: Served,
) -> None:
    async with admin(served) as operator:
        invite, code = await operator.create_invite(uses=2, credit=40, note="lab volunteers")
        assert code.startswith("sgi_") and len(code) >= 40
        account, key = await signup(served.address, code, "vol1")
        assert (account.name, account.balance) == ("vol1", 40)
        async with AsyncClient(served.address, key) as vol1:
            mine = await vol1.account()
        assert (mine.name, mine.balance, mine.is_admin) == ("vol1", 40, False)
        listed = {i.id: i for i in await operator.invites()}
        assert (listed[invite.id].used, listed[invite.id].uses) == (1, 2)
        assert listed[invite.id].note == "lab volunteers"
        check = await operator.ledger_check()
        assert check.balanced and check.total == 0
        entries = await operator.ledger_entries(account="client:vol1")
        assert [(e.amount, e.reason) for e in entries] == [
            (40, f"signup with invitation {invite.id}")
        ]
        # `admin ledger entries --account vol1`: the account's name finds the same entries
        assert await operator.ledger_entries(account="vol1") == entries
        events = [e for e in await operator.events() if e.kind == "account.signup"]
        assert [(e.account, e.data["invite"], e.data["credit"]) for e in events] == [
            ("vol1", invite.id, 40)
        ]
        # the coordinator picks a name when none is given
        other, _ = await signup(served.address, code)
        assert other.name.startswith("user-") and other.balance == 40


async def test_only_the_codes_hash_is_stored(served: Served) -> None:
    async with admin(served) as operator:
        _, code = await operator.create_invite()
    (stored,) = served.app.store.list_invites()
    assert stored.code_hash == hashlib.sha256(code.encode()).hexdigest()
    assert code not in repr(stored)
    if served.app.store.__class__.__name__ == "SqliteStore":
        data = b"".join(p.read_bytes() for p in served.app.settings.data_dir.glob("*.db*"))
        assert stored.code_hash.encode() in data and code.encode() not in data


async def test_each_bad_code_is_refused_in_its_own_words_and_changes_nothing(
    served: Served,
) -> None:
    store, now = served.app.store, time.time()
    served.app.invites.limiter.config.burst = 100
    async with admin(served) as operator:
        _, revoked_code = await operator.create_invite(credit=5)
        revoked = (await operator.invites())[0]
        await operator.revoke_invite(revoked.id)
        _, used_code = await operator.create_invite(credit=5)
        await signup(served.address, used_code, "first")
    store.add_invite(
        Invite("old", hashlib.sha256(b"sgi_old").hexdigest(), 3, 5, "", now - 60, now - 1)
    )
    before = snapshot(store)
    cases = {
        "sgi_nobody_issued_this": (
            "INVITE_UNKNOWN",
            "not known",
            grpc.StatusCode.PERMISSION_DENIED,
        ),
        "": ("INVITE_UNKNOWN", "not known", grpc.StatusCode.PERMISSION_DENIED),
        "x" * 5000: ("INVITE_UNKNOWN", "not known", grpc.StatusCode.PERMISSION_DENIED),
        revoked_code: ("INVITE_REVOKED", "revoked", grpc.StatusCode.PERMISSION_DENIED),
        "sgi_old": ("INVITE_EXPIRED", "expired", grpc.StatusCode.PERMISSION_DENIED),
        used_code: ("INVITE_USED_UP", "all 1 signup", grpc.StatusCode.PERMISSION_DENIED),
    }
    for code, (expected, words, status) in cases.items():
        err = await refused(served, code, "newbie")
        assert (err.code, err.status) == (expected, status)
        assert words in err.message
    assert snapshot(store) == before


async def test_a_bad_or_taken_name_uses_nothing_of_the_code(served: Served) -> None:
    store = served.app.store
    served.app.invites.limiter.config.burst = 100
    async with admin(served) as operator:
        _, code = await operator.create_invite(credit=9)
    before = snapshot(store)
    for name, expected in (
        ("Bad Name!", "BAD_NAME"),
        ("a" * 64, "BAD_NAME"),
        ("sparegrid-canary", "BAD_NAME"),  # a system account, made on first use
        ("alice", "ACCOUNT_EXISTS"),
        ("admin", "ACCOUNT_EXISTS"),
    ):
        err = await refused(served, code, name)
        assert err.code == expected, name
    assert snapshot(store) == before
    assert CANARY_ACCOUNT.startswith(RESERVED_PREFIX)
    account, _ = await signup(served.address, code, "carol")  # the one use is still there
    assert account.balance == 9
    assert (await refused(served, code, "dave")).code == "INVITE_USED_UP"


async def test_a_name_is_checked_only_once_the_code_is_good(served: Served) -> None:
    """Without a code, a signup tells nothing of which names exist."""
    taken = await refused(served, "sgi_guess", "alice")
    free = await refused(served, "sgi_guess", "zed")
    assert taken.code == free.code == "INVITE_UNKNOWN" and taken.message == free.message


async def test_two_signups_racing_for_a_one_use_code_exactly_one_wins(served: Served) -> None:
    async with admin(served) as operator:
        _, code = await operator.create_invite(uses=1, credit=10)
    outcomes = await asyncio.gather(
        *(signup(served.address, code, f"racer{i}") for i in range(2)), return_exceptions=True
    )
    won = [o for o in outcomes if isinstance(o, tuple)]
    lost = [o for o in outcomes if isinstance(o, SparegridError)]
    assert len(won) == 1 and len(lost) == 1 and lost[0].code == "INVITE_USED_UP"
    names = {a.name for a in served.app.store.list_accounts()}
    assert len(names & {"racer0", "racer1"}) == 1
    (invite,) = served.app.store.list_invites()
    assert invite.used == 1
    assert served.app.ledger.check().balanced


async def test_signups_from_one_address_are_rate_limited(served: Served) -> None:
    async with admin(served) as operator:
        _, code = await operator.create_invite(uses=10, credit=1)
    served.app.invites.limiter.config.burst = 3
    for i in range(3):
        assert (await refused(served, f"sgi_guess{i}")).code == "INVITE_UNKNOWN"
    before = snapshot(served.app.store)
    err = await refused(served, code, "patient")  # a good code too, once over the limit
    assert err.code == "TOO_MANY_SIGNUPS" and err.status == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "try again in" in err.message
    assert snapshot(served.app.store) == before


def test_the_limit_refills_per_address_and_forgets_idle_addresses() -> None:
    clock = FakeClock(0.0)
    limiter = SignupLimiter(clock, SignupConfig(burst=2, per_minute=1.0, max_addresses=3))
    limiter.admit("10.0.0.1")
    limiter.admit("10.0.0.1")
    with pytest.raises(Exception, match="try again in 60 s"):
        limiter.admit("10.0.0.1")
    limiter.admit("10.0.0.2")  # another address has its own bucket
    clock.advance(60.0)
    limiter.admit("10.0.0.1")  # one more a minute later
    for i in range(10):
        limiter.admit(f"192.0.2.{i}")
    assert len(limiter._buckets) <= 3


def test_the_callers_address_drops_its_port_and_an_ipv6_hosts_bits() -> None:
    assert peer_address("ipv4:10.0.0.7:52100") == "10.0.0.7"
    assert peer_address("ipv6:[2001:db8::1]:52100") == "2001:db8::/64"
    assert peer_address("ipv6:[2001:db8::ffff:2]:7") == "2001:db8::/64"  # one bucket
    # gRPC escapes the brackets of an IPv6 peer: the same /64, not one bucket per host
    assert peer_address("ipv6:%5B2001:db8::1%5D:52100") == "2001:db8::/64"
    assert peer_address("ipv6:%5B2001:db8::2%5D:52101") == "2001:db8::/64"
    assert peer_address("ipv6:[::1]:52100") == "::1"  # loopback is one host
    assert peer_address("ipv6:%5B::ffff:192.0.2.9%5D:7") == "192.0.2.9"  # IPv4, mapped
    assert peer_address("unix:/tmp/sock") == "/tmp/sock"


async def test_every_other_method_refuses_a_call_without_a_key(served: Served) -> None:
    checked = 0
    for module in (client_pb2, admin_pb2, blob_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                path = f"/{service.full_name}/{method.name}"
                if path in KEYLESS:
                    continue
                request = message_factory.GetMessageClass(method.input_type)()
                with pytest.raises(aio.AioRpcError) as err:
                    await call_without_key(served.channel, path, method, request)
                assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED, path
                checked += 1
    assert checked > 30


async def call_without_key(
    channel: aio.Channel, path: str, method: object, request: object
) -> None:
    serialize = type(request).SerializeToString
    client_streaming = getattr(method, "client_streaming", False)
    server_streaming = getattr(method, "server_streaming", False)
    if client_streaming:
        call = channel.stream_unary(path, request_serializer=serialize)
        await call(iter([request]), timeout=10)
    elif server_streaming:
        stream = channel.unary_stream(path, request_serializer=serialize)(request, timeout=10)
        async for _ in stream:
            pass
    else:
        await channel.unary_unary(path, request_serializer=serialize)(request, timeout=10)


async def test_only_an_admin_issues_lists_and_revokes_invitations(served: Served) -> None:
    async with AsyncAdminClient(served.address, api_key=served.alice_key) as alice:
        for call in (alice.create_invite(), alice.invites(), alice.revoke_invite("x")):
            with pytest.raises(SparegridError) as err:
                await call
            assert err.value.code == "NOT_ADMIN"
    assert served.app.store.list_invites() == []


async def test_bad_invitation_settings_are_refused(served: Served) -> None:
    async with admin(served) as operator:
        for kwargs, expected in (
            ({"uses": 100_001}, "BAD_USES"),
            ({"expires_in": 11 * 365 * 86400.0}, "BAD_EXPIRY"),
            ({"expires_in": -5.0}, "BAD_EXPIRY"),
            ({"credit": -1}, "BAD_AMOUNT"),
            ({"note": "x" * 201}, "BAD_NOTE"),
        ):
            with pytest.raises(SparegridError) as err:
                await operator.create_invite(**kwargs)  # type: ignore[arg-type]
            assert err.value.code == expected, kwargs
        with pytest.raises(SparegridError) as err:
            await operator.revoke_invite("nope")
        assert err.value.code == "INVITE_NOT_FOUND"
    assert served.app.store.list_invites() == []


async def test_the_cli_paths_of_the_operator_and_the_volunteer(
    cli: Cli, served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = await cli("admin", "invite", "list")
    assert empty.code == 0 and "no one can sign up" in empty.err
    issued = await cli(
        "admin",
        "invite",
        "create",
        "--uses",
        "2",
        "--credit",
        "50",
        "--expires",
        "7d",
        "--note",
        "lab",
    )
    assert issued.code == 0
    code = issued.out.strip()
    assert issued.out == code + "\n" and code.startswith("sgi_")
    assert "shown only this once" in issued.err and "2 signup(s), 50 credit each" in issued.err
    listed = await cli("admin", "invite", "list")
    (invite,) = served.app.store.list_invites()
    assert invite.id in listed.out and "0/2" in listed.out and "open" in listed.out

    monkeypatch.delenv("SPAREGRID_ADMIN_KEY")
    joined = await cli("account", "signup", "--code", code, "--name", "vol")
    assert joined.code == 0, joined.err
    saved = api_key_path(served.address)
    assert joined.out.strip() == str(saved)
    assert "signed up as 'vol' with 50 credit" in joined.err
    assert f"--owner-key-file {saved}" in joined.err
    assert stat.S_IMODE(os.stat(saved).st_mode) == 0o600
    shown = await cli("account", "--json")  # no $SPAREGRID_API_KEY: the saved key
    assert shown.code == 0 and '"balance": 50' in shown.out and '"name": "vol"' in shown.out

    again = await cli("account", "signup", "--code", code, "--name", "vol2")
    assert again.code == 1 and "[KEY_SAVED]" in again.err and str(saved) in again.err
    assert served.app.store.list_invites()[0].used == 1  # nothing was sent
    saved.unlink()
    monkeypatch.setattr("sys.stdin", io.StringIO(code + "\n"))  # `--code -`: out of `ps`
    taken = await cli("account", "signup", "--code", "-", "--name", "vol")
    assert taken.code == 1 and "[ACCOUNT_EXISTS]" in taken.err and not saved.exists()

    monkeypatch.setenv("SPAREGRID_ADMIN_KEY", served.admin_key)
    revoked = await cli("admin", "invite", "revoke", invite.id)
    assert revoked.code == 0 and "revoked" in revoked.out
    assert "revoked" in (await cli("admin", "invite", "list")).out
    late = await cli("account", "signup", "--code", code, "--name", "vol3")
    assert late.code == 1 and "[INVITE_REVOKED]" in late.err
    assert "sparegrid admin invite create" in late.err  # the hint: ask for a new code
    unknown = await cli("admin", "invite", "revoke", "nope")
    assert unknown.code == 1 and "[INVITE_NOT_FOUND]" in unknown.err


async def test_bad_cli_flags_exit_2_and_issue_nothing(cli: Cli, served: Served) -> None:
    for argv in (
        ("--expires", "soon"),
        ("--expires", "0"),
        ("--uses", "0"),
        ("--uses", "two"),
    ):
        with pytest.raises(SystemExit) as exit_:
            await cli("admin", "invite", "create", *argv)
        assert exit_.value.code == 2, argv
    assert served.app.store.list_invites() == []


async def test_an_invitation_whose_credit_pays_the_stake_is_issued_with_a_warning(
    cli: Cli, served: Served
) -> None:
    """With --min-stake, votes cost stake; an invitation granting at least that much credit
    hands whoever holds it that many voting owners for nothing. It is still issued (a
    client needs credit to run jobs), but the operator is told so, in words, and told
    nothing when the credit is below the stake."""
    served.app.identities.config.min_stake = 50
    free = await cli("admin", "invite", "create", "--uses", "3", "--credit", "50")
    assert free.code == 0 and free.out.strip().startswith("sgi_")
    assert "warning:" in free.err and "--min-stake" in free.err and "3 owners" in free.err
    below = await cli("admin", "invite", "create", "--uses", "3", "--credit", "49")
    assert below.code == 0 and "warning:" not in below.err
    async with admin(served) as operator:
        made, _ = await operator.create_invite(uses=1, credit=80)
    assert "an owner who paid" in made.warning
    assert len(served.app.store.list_invites()) == 3  # each was issued
