"""The store's invitation codes, on every backend: a use is counted only while the
invitation is usable, undone with its transaction, and two coordinators racing for the
last use of one over the same database cannot both win."""

import threading

import pytest

from sparegrid.coordinator.domain import Invite
from sparegrid.coordinator.store.base import Conflict, Store
from sparegrid.coordinator.store.schema import MIGRATIONS
from tests.store.conftest import Opener

NOW = 1_000_000.0


def invite(
    invite_id: str = "inv1", uses: int = 1, expires_at: float = 0.0, created_at: float = NOW
) -> Invite:
    return Invite(
        id=invite_id,
        code_hash=f"hash-of-{invite_id}",
        uses=uses,
        credit=25,
        note="for the lab",
        created_at=created_at,
        expires_at=expires_at,
    )


def test_an_invitation_round_trips_and_lists_newest_first(store: Store) -> None:
    store.add_invite(invite("old", created_at=NOW - 10))
    store.add_invite(invite("new", uses=3, expires_at=NOW + 60))
    assert store.get_invite("new") == invite("new", uses=3, expires_at=NOW + 60)
    assert store.find_invite("hash-of-old") == invite("old", created_at=NOW - 10)
    assert store.find_invite("nope") is None and store.get_invite("nope") is None
    assert [i.id for i in store.list_invites()] == ["new", "old"]
    with pytest.raises(Conflict):
        store.add_invite(invite("old"))
    taken_code = invite("other")
    taken_code.code_hash = "hash-of-new"
    with pytest.raises(Conflict):
        store.add_invite(taken_code)
    assert len(store.list_invites()) == 2


def test_uses_are_counted_until_none_is_left(store: Store) -> None:
    store.add_invite(invite(uses=2))
    assert store.use_invite("hash-of-inv1", NOW)
    assert store.use_invite("hash-of-inv1", NOW)
    assert not store.use_invite("hash-of-inv1", NOW)
    assert not store.use_invite("hash-of-nothing", NOW)
    found = store.get_invite("inv1")
    assert found is not None and found.used == 2


def test_an_expired_or_revoked_invitation_is_not_used(store: Store) -> None:
    store.add_invite(invite("soon", uses=5, expires_at=NOW + 1))
    store.add_invite(invite("never", uses=5))
    assert store.use_invite("hash-of-soon", NOW)
    assert not store.use_invite("hash-of-soon", NOW + 1)  # expires at that instant
    store.revoke_invite("never")
    assert not store.use_invite("hash-of-never", NOW)
    soon, never = store.get_invite("soon"), store.get_invite("never")
    assert soon is not None and soon.used == 1 and not soon.revoked
    assert never is not None and never.used == 0 and never.revoked


def test_a_use_is_undone_with_its_transaction(store: Store) -> None:
    store.add_invite(invite())
    with pytest.raises(RuntimeError), store.transaction():
        assert store.use_invite("hash-of-inv1", NOW)
        raise RuntimeError("the account could not be created")
    found = store.get_invite("inv1")
    assert found is not None and found.used == 0
    assert store.use_invite("hash-of-inv1", NOW)


def test_the_invites_table_comes_in_one_migration_numbered_in_order() -> None:
    versions = [version for version, _ in MIGRATIONS]
    assert versions == sorted(set(versions))
    assert sum("CREATE TABLE invites" in script for _, script in MIGRATIONS) == 1


def test_two_coordinators_racing_for_the_last_use_cannot_both_win(
    open_sql_store: Opener,
) -> None:
    first, second = open_sql_store(), open_sql_store()
    first.add_invite(invite(uses=1))
    start = threading.Barrier(2)
    won: list[bool] = []

    def signup(store: Store) -> None:
        start.wait()
        with store.transaction():
            won.append(store.use_invite("hash-of-inv1", NOW))

    threads = [threading.Thread(target=signup, args=(s,)) for s in (first, second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(won) == [False, True]
    found = second.get_invite("inv1")
    assert found is not None and found.used == 1
