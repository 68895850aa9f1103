"""The store contract for the trust layer: replicas, reputations, owners, work, policies."""

from collections.abc import Callable

import pytest

from sparegrid.coordinator.domain import (
    ReplicaState,
    Reputation,
    Standing,
)
from sparegrid.coordinator.store.base import Conflict, Store
from sparegrid.coordinator.store.engine import SqlEngine
from sparegrid.coordinator.store.schema import MIGRATIONS
from sparegrid.coordinator.store.sql import SqlStore
from tests.store.builders import job, node, replica


def test_replicas_are_kept_per_task_oldest_first(store: Store) -> None:
    j, ts = job("j1", tasks=2)
    store.create_job(j, ts)
    a, b, c = (
        replica("a2", ts[0].id, at=2.0),
        replica("a1", ts[0].id, "n2", 3.0),
        replica("a3", ts[1].id),
    )
    store.add_replicas([a, b, c])
    assert store.get_replicas([ts[0].id]) == [a, b]
    assert store.get_replicas([ts[1].id, ts[0].id]) == [c, a, b]
    assert store.get_replicas(["nothing"]) == []
    a.state = ReplicaState.VALID
    b.state = ReplicaState.INVALID
    b.owner = "not written"
    store.update_replicas([a, b])
    got = store.get_replicas([ts[0].id])
    assert [(p.state, p.owner) for p in got] == [
        (ReplicaState.VALID, "owner-n1"),
        (ReplicaState.INVALID, "owner-n2"),
    ]
    got[0].outputs.clear()
    assert store.get_replicas([ts[0].id])[0].outputs == a.outputs


def test_a_second_replica_of_one_attempt_conflicts_and_changes_nothing(store: Store) -> None:
    j, ts = job("j1", tasks=1)
    store.create_job(j, ts)
    store.add_replicas([replica("a1", ts[0].id)])
    with pytest.raises(Conflict):
        store.add_replicas([replica("a2", ts[0].id), replica("a1", ts[0].id)])
    with pytest.raises(Conflict):
        store.add_replicas([replica("a3", ts[0].id), replica("a3", ts[0].id)])
    assert [p.attempt_id for p in store.get_replicas([ts[0].id])] == ["a1"]


def test_reputations_are_inserted_replaced_and_listed(store: Store) -> None:
    assert store.get_reputations() == []
    good = Reputation("n1", streak=5, validated=7, invalid=1, strikes=1, updated_at=3.0)
    bad = Reputation("n2", 0, 0, 3, 3, Standing.QUARANTINED, "3 invalid results", 4.0)
    store.put_reputations([bad, good])
    assert store.get_reputations() == [good, bad]
    assert store.get_reputations(["n2", "n9"]) == [bad]
    bad.standing, bad.reason, bad.strikes = Standing.ACTIVE, "reinstated", 0
    store.put_reputations([bad])
    assert store.get_reputations(["n2"]) == [bad]
    store.get_reputations(["n2"])[0].reason = "changed"
    assert store.get_reputations(["n2"])[0].reason == "reinstated"


def test_owner_work_and_policy_round_trip(store: Store) -> None:
    n = node("n1")
    n.owner = "alice"
    store.upsert_node(n)
    n.owner = "bob"
    store.upsert_node(n)
    stored = store.get_node("n1")
    assert stored is not None and stored.owner == "bob"
    j, ts = job("j1", tasks=2)
    j.replicas, j.quorum, j.price_credit, j.price_units = 3, 2, 7, 1000
    ts[1].work = 123_456_789_012
    store.create_job(j, ts)
    assert store.get_job("j1") == j
    assert [t.work for t in store.list_tasks("j1")] == [1, 123_456_789_012]


def test_replicas_roll_back_with_their_transaction(store: Store) -> None:
    j, ts = job("j1", tasks=1)
    store.create_job(j, ts)
    with pytest.raises(RuntimeError), store.transaction():
        store.add_replicas([replica("a1", ts[0].id)])
        store.put_reputations([Reputation("n1", streak=1)])
        raise RuntimeError("undo")
    assert store.get_replicas([ts[0].id]) == []
    assert store.get_reputations() == []


OLD_JOB = (
    "INSERT INTO jobs (id, account_id, kind, name, params, inputs, requirements, max_attempts,"
    " price_per_task, task_count, state, cost_held, cost_spent, error, created_at, finished_at,"
    " idempotency_key) VALUES ('old', 'acc', 'echo', '', ?, '{}', ?, 3, 4, 1, 'queued', 4, 0,"
    " '', 1, NULL, '')"
)


def test_jobs_from_before_keep_their_flat_price(
    open_sql_store: Callable[[], SqlStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(SqlEngine, "migrations", MIGRATIONS[:1])
    first = open_sql_store()
    requirements = (
        '{"device_kind":"","min_compute_capability":"","min_memory_bytes":0,"software":{}}'
    )
    with first.transaction():
        first._run(OLD_JOB, (b"", requirements))
    first.close()
    monkeypatch.setattr(SqlEngine, "migrations", MIGRATIONS)
    upgraded = open_sql_store()
    old = upgraded.get_job("old")
    assert old is not None
    assert (old.price_credit, old.price_units, old.replicas, old.quorum) == (4, 1, 1, 1)
    assert old.task_cost(1) == 4
