"""The store contract: what base.Store promises, checked on every backend."""

import threading

import pytest

from sparegrid.coordinator.domain import (
    MAX_BALANCE,
    MINT,
    Account,
    Attempt,
    AttemptLog,
    AttemptState,
    FileRef,
    JobState,
    Posting,
    Replica,
    ReplicaState,
    Task,
    TaskState,
    Transaction,
    escrow_account,
    node_account,
)
from sparegrid.coordinator.store.base import BalanceOverflow, Conflict, InsufficientFunds, Store
from tests.store.builders import (
    ALICE,
    BOB,
    account,
    attempt,
    grant,
    job,
    leased_job,
    node,
    replica,
    transfer,
)

# accounts


def test_accounts_are_found_by_id_name_and_key_hash(store: Store) -> None:
    alice, root = account("alice"), account("root")
    store.create_account(alice)
    store.create_account(root)
    assert store.get_account(alice.id) == alice
    assert store.get_account_by_name("root") == root
    assert store.get_account_by_key_hash("hash-alice") == alice
    assert store.get_account("nobody") is None
    assert store.get_account_by_name("nobody") is None
    assert store.get_account_by_key_hash("nothing") is None
    assert sorted(a.name for a in store.list_accounts()) == ["alice", "root"]


def test_taken_account_name_or_key_conflicts(store: Store) -> None:
    store.create_account(account("alice"))
    with pytest.raises(Conflict):
        store.create_account(Account("acc-2", "alice", "other-hash", False, 2.0))
    with pytest.raises(Conflict):
        store.create_account(Account("acc-3", "carol", "hash-alice", False, 2.0))
    assert [a.name for a in store.list_accounts()] == ["alice"]


# ledger


def test_post_moves_credit_and_records_entries(store: Store) -> None:
    assert store.post(grant("g1", ALICE, 100))
    assert store.post(transfer("t1", ALICE, escrow_account("j1"), 30, job_id="j1"))
    assert store.balance(ALICE) == 70
    assert store.balance(MINT) == -100
    assert store.balance("client:nobody") == 0
    assert store.balances("client:") == {ALICE: 70}
    assert store.balances("CLIENT:") == {}
    assert store.balances() == {MINT: -100, ALICE: 70, escrow_account("j1"): 30}
    newest = store.ledger_entries(account=ALICE)
    assert [(e.amount, e.reason, e.transaction_id) for e in newest] == [
        (-30, "pay", "txn-t1"),
        (100, "grant", "g1"),
    ]
    assert [e.account for e in store.ledger_entries(job_id="j1")] == [escrow_account("j1"), ALICE]
    assert store.ledger_entries(account=ALICE, job_id="j1")[0].created_at == 2.0
    assert len(store.ledger_entries(limit=3)) == 3
    assert store.ledger_totals() == (2, 4, 0)


def test_reposting_an_idempotency_key_changes_nothing(store: Store) -> None:
    assert store.post(grant("g1", ALICE, 100))
    assert not store.post(grant("g1", ALICE, 100))
    assert not store.post(Transaction("other-id", "g1", "x", [Posting(MINT, -5), Posting(BOB, 5)]))
    with pytest.raises(Conflict):
        store.post(Transaction("g1", "new-key", "x", [Posting(MINT, -5), Posting(BOB, 5)]))
    assert store.balances() == {MINT: -100, ALICE: 100}
    assert store.ledger_totals() == (1, 2, 0)


def test_post_many_books_each_new_transaction_once(store: Store) -> None:
    store.post(grant("g1", ALICE, 10))
    escrow = escrow_account("j1")
    store.post(transfer("hold", ALICE, escrow, 10))
    pays = [transfer(f"p{i}", escrow, f"node:n{i % 2}", 2, job_id="j1") for i in range(3)]
    posted = store.post_many([*pays, pays[0]])
    assert posted.new == [True, True, True, False]
    # the balances after, of every account named: what a paid node is told it holds
    assert posted.balances == {escrow: 4, "node:n0": 4, "node:n1": 2}
    again = store.post_many(pays)
    assert again.new == [False, False, False]
    assert again.balances == posted.balances
    assert store.balances("node:") == {"node:n0": 4, "node:n1": 2}
    assert store.balance(escrow) == 4
    assert store.unbalanced_transactions() == []


def test_post_many_short_of_funds_writes_nothing(store: Store) -> None:
    store.post(grant("g1", ALICE, 5))
    pays = [transfer(f"p{i}", ALICE, BOB, 2) for i in range(3)]
    with pytest.raises(InsufficientFunds) as err:
        store.post_many(pays)
    assert err.value.balance == 5 and err.value.needed == 6
    assert store.balances() == {MINT: -5, ALICE: 5}
    assert store.post_many(pays[:2]).new == [True, True]


def test_a_balance_past_what_a_bigint_holds_is_refused_writing_nothing(store: Store) -> None:
    """More than 2^63 - 1 credit issued in all took the mint's balance past a BIGINT:
    PostgreSQL failed the whole group commit, SQLite kept a float."""
    store.post(grant("g1", ALICE, MAX_BALANCE - 10))
    with pytest.raises(BalanceOverflow) as err:
        store.post_many([grant("g2", BOB, 6), grant("g3", BOB, 5)])
    assert (err.value.account, err.value.balance, err.value.change) == (
        MINT,
        -(MAX_BALANCE - 10),
        -11,
    )
    assert store.balances() == {MINT: -(MAX_BALANCE - 10), ALICE: MAX_BALANCE - 10}
    assert store.ledger_totals() == (1, 2, 0)
    assert store.post(grant("g2", BOB, 10)), "a refused post must not use up its key"
    assert store.balances() == {MINT: -MAX_BALANCE, ALICE: MAX_BALANCE - 10, BOB: 10}
    with pytest.raises(BalanceOverflow):
        store.post(grant("g4", ALICE, 1))
    store.post(transfer("t1", BOB, ALICE, 10))  # one account may hold it all
    assert store.balance(ALICE) == MAX_BALANCE
    assert store.computed_balances() == store.balances()


def test_unbalanced_postings_raise_value_error(store: Store) -> None:
    bad = Transaction("t", "k", "bad", [Posting(MINT, -10), Posting(ALICE, 9)])
    with pytest.raises(ValueError):
        store.post(bad)
    assert store.ledger_totals() == (0, 0, 0)
    assert store.balances() == {}


def test_insufficient_funds_leaves_ledger_unchanged(store: Store) -> None:
    store.post(grant("g1", ALICE, 10))
    with pytest.raises(InsufficientFunds) as raised:
        store.post(transfer("t1", ALICE, BOB, 11))
    assert (raised.value.account, raised.value.balance, raised.value.needed) == (ALICE, 10, 11)
    assert store.balances() == {MINT: -10, ALICE: 10}
    assert store.ledger_totals() == (1, 2, 0)
    with pytest.raises(InsufficientFunds):
        store.post(transfer("t2", BOB, ALICE, 1))
    store.post(grant("g2", ALICE, 1))
    assert store.post(transfer("t1", ALICE, BOB, 11)), "a failed post must not use up its key"
    assert store.balances("client:") == {ALICE: 0, BOB: 11}


def test_only_the_net_change_of_an_account_counts(store: Store) -> None:
    swap = Transaction("s", "s", "swap", [Posting(ALICE, -5), Posting(ALICE, 5)])
    assert store.post(swap)
    assert store.balance(ALICE) == 0


def test_ledger_audit_queries(store: Store) -> None:
    store.post(grant("g1", ALICE, 100))
    store.post(transfer("hold", ALICE, escrow_account("j1"), 20, job_id="j1"))
    store.post(transfer("pay1", escrow_account("j1"), node_account("n1"), 8, job_id="j1"))
    store.post(transfer("pay2", escrow_account("j1"), node_account("n2"), 7, job_id="j1"))
    store.post(transfer("pay3", ALICE, node_account("n1"), 4, job_id="j2"))
    store.post(transfer("tip", ALICE, node_account("n1"), 1))
    assert store.unbalanced_transactions() == []
    assert store.computed_balances() == store.balances()
    assert store.payments_by_job() == {"j1": 15, "j2": 4}
    assert sum(store.balances().values()) == 0
    assert store.ledger_totals() == (6, 12, 0)


# jobs and tasks


def test_job_and_tasks_round_trip(store: Store) -> None:
    j, ts = job("j1", tasks=3)
    store.create_job(j, ts)
    assert store.get_job("j1") == j
    assert store.get_job("j2") is None
    assert store.list_tasks("j1") == ts
    assert sorted(t.id for t in store.get_tasks(["j1-t2", "j1-t0", "missing"])) == [
        "j1-t0",
        "j1-t2",
    ]
    assert store.list_tasks("j1", after_index=0, limit=1) == ts[1:2]
    assert store.list_tasks("unknown") == []


def test_job_idempotency_key_is_unique_per_account(store: Store) -> None:
    store.create_job(*job("j1", key="k"))
    with pytest.raises(Conflict):
        store.create_job(*job("j2", key="k"))
    with pytest.raises(Conflict):
        store.create_job(*job("j1"))  # the job id is taken too
    store.create_job(*job("j3", account_id="acc-bob", key="k"))
    store.create_job(*job("j4"))
    store.create_job(*job("j5"))  # empty keys never clash
    found = store.find_job("acc-alice", "k")
    assert found is not None and found.id == "j1"
    assert store.find_job("acc-bob", "k") is not None
    assert store.find_job("acc-alice", "") is None
    assert store.find_job("acc-alice", "nope") is None
    assert store.get_job("j2") is None
    assert store.get_tasks(["j2-t0"]) == []


def test_list_jobs_newest_first_filtered(store: Store) -> None:
    for n, (owner, created) in enumerate([("alice", 1.0), ("bob", 2.0), ("alice", 3.0)]):
        store.create_job(*job(f"j{n}", account_id=f"acc-{owner}", created_at=created))
    done, _ = job("j2")
    done.state = JobState.SUCCEEDED
    store.update_job(done)
    assert [j.id for j in store.list_jobs()] == ["j2", "j1", "j0"]
    assert [j.id for j in store.list_jobs(account_id="acc-alice")] == ["j2", "j0"]
    assert [j.id for j in store.list_jobs(states=[JobState.QUEUED])] == ["j1", "j0"]
    assert [j.id for j in store.list_jobs("acc-alice", [JobState.SUCCEEDED])] == ["j2"]
    assert store.list_jobs(states=[]) == []
    assert [j.id for j in store.list_jobs(limit=1)] == ["j2"]


def test_update_job_writes_its_outcome_only(store: Store) -> None:
    j, ts = job("j1")
    store.create_job(j, ts)
    changed, _ = job("j1")
    changed.state, changed.cost_spent, changed.error = JobState.FAILED, 7, "boom"
    changed.finished_at, changed.cost_held, changed.name = 9.5, 999, "renamed"
    store.update_job(changed)
    got = store.get_job("j1")
    assert got is not None
    assert (got.state, got.cost_spent, got.error, got.finished_at, got.cost_held) == (
        JobState.FAILED,
        7,
        "boom",
        9.5,
        999,  # a retry holds more
    )
    assert got.name == j.name


def test_update_job_records_its_final_counts(store: Store) -> None:
    j, ts = job("j1", tasks=5)
    store.create_job(j, ts)
    assert (store.get_job("j1") or j).tasks_succeeded == -1  # not ended: not recorded
    j.state, j.tasks_succeeded, j.tasks_failed = JobState.FAILED, 3, 1
    store.update_job(j)
    got = store.get_job("j1")
    assert got is not None and (got.tasks_succeeded, got.tasks_failed) == (3, 1)


def test_a_job_written_in_slices(store: Store) -> None:
    """A large job's row first, then its tasks a slice at a time, in any order."""
    j, ts = job("j1", tasks=5)
    store.create_job(j, [])
    store.add_tasks(ts[3:])
    store.add_tasks(ts[:3])
    assert store.list_tasks("j1") == ts
    assert store.list_tasks("j1", after_index=1, limit=2) == ts[2:4]
    with pytest.raises(Conflict):
        store.add_tasks([ts[0]])  # written already
    clash = Task("j1-other", "j1", 4, b"", [])
    with pytest.raises(Conflict):
        store.add_tasks([clash])  # the index is taken
    assert store.list_tasks("j1") == ts


def test_deleting_a_job_whose_submit_did_not_complete(store: Store) -> None:
    j, ts = job("j1", tasks=5, key="k")
    j.state = JobState.SUBMITTING
    store.create_job(j, ts)
    store.create_job(*job("j2"))
    assert store.delete_tasks("j1", 0, 2) == 2
    assert [t.index for t in store.list_tasks("j1")] == [2, 3, 4]
    assert store.delete_tasks("j1", 2, 10) == 3
    store.delete_job("j1")
    assert store.get_job("j1") is None and store.list_tasks("j1") == []
    assert store.find_job("acc-alice", "k") is None
    store.create_job(*job("j3", key="k"))  # the key is free again
    assert len(store.list_tasks("j2")) == 2


def test_cancel_queued_tasks_by_index_range(store: Store) -> None:
    ts = leased_job(store, tasks=6)
    store.lease_tasks([attempt("a1", ts[1])])
    ts[2].state = TaskState.SUCCEEDED
    store.update_tasks([ts[2]])
    assert store.cancel_queued_tasks("j1", 0, 4) == 2  # 0 and 3; 1 is leased, 2 done
    states = [t.state for t in store.list_tasks("j1")]
    assert states == [
        TaskState.CANCELLED,
        TaskState.LEASED,
        TaskState.SUCCEEDED,
        TaskState.CANCELLED,
        TaskState.QUEUED,
        TaskState.QUEUED,
    ]
    assert store.cancel_queued_tasks("j1", 4, 100) == 2
    assert store.cancel_queued_tasks("j1", 0, 100) == 0
    assert store.cancel_queued_tasks("other", 0, 100) == 0


def test_task_counts_name_every_state(store: Store) -> None:
    ts = leased_job(store, tasks=3)
    store.lease_tasks([attempt("a1", ts[0])])
    assert store.task_counts("j1") == {
        TaskState.QUEUED: 2,
        TaskState.LEASED: 1,
        TaskState.SUCCEEDED: 0,
        TaskState.FAILED: 0,
        TaskState.CANCELLED: 0,
    }
    assert set(store.task_counts("none").values()) == {0}


def test_queued_tasks_oldest_job_first_then_by_index(store: Store) -> None:
    store.create_job(*job("late", created_at=5.0, tasks=2))
    early, early_tasks = job("early", created_at=1.0, tasks=3)
    store.create_job(early, list(reversed(early_tasks)))
    store.lease_tasks([attempt("a1", early_tasks[1])])
    assert [t.id for t in store.queued_tasks()] == ["early-t0", "early-t2", "late-t0", "late-t1"]


def test_update_tasks_writes_result_fields(store: Store) -> None:
    ts = leased_job(store)
    done = ts[0]
    done.state, done.attempts, done.node_id = TaskState.SUCCEEDED, 2, "n1"
    done.outputs, done.receipt, done.error = [FileRef("out", "d-out", 42)], b"\x00rcpt", ""
    ts[1].state, ts[1].error = TaskState.FAILED, "too many failures"
    store.update_tasks([done, ts[1]])
    assert store.list_tasks("j1") == [done, ts[1]]


def test_lease_tasks_leases_queued_tasks_only(store: Store) -> None:
    ts = leased_job(store, tasks=3)
    store.update_tasks([Task(**{**vars(ts[2]), "state": TaskState.CANCELLED})])
    first = attempt("a1", ts[0])
    won = store.lease_tasks(
        [first, attempt("a2", ts[0]), attempt("a3", ts[2]), attempt("a4", ts[1], node="n2")]
    )
    assert [a.id for a in won] == ["a1", "a4"]
    assert won[0] == first
    assert store.lease_tasks([attempt("a5", ts[0])]) == []
    by_id = {t.id: t for t in store.list_tasks("j1")}
    assert [(by_id[t.id].state, by_id[t.id].attempts) for t in ts] == [
        (TaskState.LEASED, 1),
        (TaskState.LEASED, 1),
        (TaskState.CANCELLED, 0),
    ]
    assert sorted(a.id for a in store.get_attempts(["a1", "a2", "a3", "a4", "a5"])) == ["a1", "a4"]
    ts[0].state = TaskState.QUEUED  # retried: the count keeps growing
    store.update_tasks([Task(**{**vars(ts[0]), "attempts": 1})])
    assert [a.id for a in store.lease_tasks([attempt("a6", ts[0])])] == ["a6"]
    assert store.get_tasks([ts[0].id])[0].attempts == 2
    assert store.lease_tasks([]) == []


def test_a_spot_check_and_its_result_keep_the_params_they_ran(store: Store) -> None:
    (task,) = leased_job(store, tasks=1)
    crop = b'{"frames": [1], "tile": [0, 16, 0, 16]}'
    spot = attempt("a1", task)
    spot.params = crop
    store.lease_tasks([spot])
    assert store.get_attempts(["a1"])[0].params == crop
    assert [a.params for a in store.running_attempts()] == [crop]
    outputs = [FileRef("tile.png", "d" * 64, 3)]
    store.add_replicas(
        [
            Replica("a0", task.id, task.job_id, "n0", "o0", outputs, b"r0", created_at=1.0),
            Replica(
                "a1", task.id, task.job_id, "n1", "o1", outputs, b"r1", created_at=2.0, params=crop
            ),
        ]
    )
    assert [(r.attempt_id, r.params) for r in store.get_replicas([task.id])] == [
        ("a0", b""),
        ("a1", crop),
    ]


# attempts


def test_running_attempts_by_node(store: Store) -> None:
    ts = leased_job(store, tasks=3)
    store.lease_tasks([attempt("a1", ts[0]), attempt("a2", ts[1], node="n2"), attempt("a3", ts[2])])
    done = store.get_attempts(["a3"])[0]
    done.state, done.finished_at = AttemptState.SUCCEEDED, 12.0
    store.update_attempts([done])
    assert sorted(a.id for a in store.running_attempts()) == ["a1", "a2"]
    assert [a.id for a in store.running_attempts("n1")] == ["a1"]
    assert store.running_attempts("nobody") == []
    assert store.get_attempts(["a3"]) == [done]


def test_expired_attempts_and_renewed_leases(store: Store) -> None:
    ts = leased_job(store, tasks=4)
    store.lease_tasks(
        [
            attempt("a1", ts[0], deadline=10.0),
            attempt("a2", ts[1], deadline=20.0),
            attempt("a3", ts[2], deadline=30.0, node="n2"),
            attempt("a4", ts[3], deadline=5.0),
        ]
    )
    failed = store.get_attempts(["a4"])[0]
    failed.state = AttemptState.FAILED
    store.update_attempts([failed])
    assert [a.id for a in store.expired_attempts(now=20.0)] == ["a1"]
    assert [a.id for a in store.expired_attempts(now=31.0)] == ["a1", "a2", "a3"]
    assert [a.id for a in store.expired_attempts(now=31.0, limit=2)] == ["a1", "a2"]
    assert store.renew_leases("n1", 50.0, max_age=1000.0) == 2
    assert store.renew_leases("nobody", 50.0, max_age=1000.0) == 0
    assert [a.id for a in store.expired_attempts(now=40.0)] == ["a3"]
    assert store.get_attempts(["a4"])[0].deadline == 5.0
    # no renewal takes an attempt past its maximum age (created at 10.0)
    assert store.renew_leases("n1", 80.0, max_age=60.0) == 2
    assert {a.deadline for a in store.get_attempts(["a1", "a2"])} == {70.0}


def test_shift_running_moves_only_running_attempts(store: Store) -> None:
    ts = leased_job(store)
    store.lease_tasks([attempt("a1", ts[0], deadline=20.0), attempt("a2", ts[1], deadline=30.0)])
    done = store.get_attempts(["a2"])[0]
    done.state = AttemptState.SUCCEEDED
    store.update_attempts([done])
    before = store.get_attempts(["a1"])[0]
    assert store.shift_running(3600.0) == 1
    after = {a.id: a for a in store.get_attempts(["a1", "a2"])}
    a1, a2 = after["a1"], after["a2"]
    assert (a1.created_at, a1.deadline) == (before.created_at + 3600.0, 3620.0)
    assert a2.deadline == 30.0
    assert [a.id for a in store.expired_attempts(now=3000.0)] == []


def test_update_attempts_writes_outcome(store: Store) -> None:
    ts = leased_job(store)
    store.lease_tasks([attempt("a1", ts[0]), attempt("a2", ts[1])])
    a1 = store.get_attempts(["a1"])[0]
    a1.state, a1.deadline, a1.finished_at = AttemptState.REJECTED, 77.0, 60.0
    a1.error_code, a1.error = "BAD_SIGNATURE", "signature did not verify"
    store.update_attempts([a1])
    assert store.get_attempts(["a1"]) == [a1]
    assert store.get_attempts(["a2"])[0].state == AttemptState.RUNNING


def test_hundreds_of_rows_in_one_call_are_each_written(store: Store) -> None:
    """Calls of many rows (a settle of a large batch) read back row for row: 300 tasks,
    attempts and replicas, with values that are all NULL in a column and mixed in others."""
    ts = leased_job(store, tasks=300)
    leased = store.lease_tasks([attempt(f"a{i}", t, deadline=float(i)) for i, t in enumerate(ts)])
    assert len(leased) == 300
    for i, a in enumerate(leased):
        a.state = AttemptState.SUCCEEDED if i % 3 else AttemptState.REJECTED
        a.finished_at = None if i % 2 else 50.0 + i
        a.error_code = "" if i % 3 else "INVALID_RESULT"
    store.update_attempts(leased)
    stored = {a.id: a for a in store.get_attempts([a.id for a in leased])}
    assert [stored[a.id] for a in leased] == leased
    for i, t in enumerate(ts):
        t.state, t.attempts, t.node_id = TaskState.SUCCEEDED, 1, f"n{i % 7}"
        t.outputs, t.receipt = [FileRef("out", f"d-{i}", i)], bytes([i % 256]) * (i % 5)
    store.update_tasks(ts)
    assert store.list_tasks("j1") == ts
    replicas = [replica(a.id, a.task_id, at=float(i)) for i, a in enumerate(leased)]
    store.add_replicas(replicas)
    for r in replicas[::2]:
        r.state = ReplicaState.VALID
    store.update_replicas(replicas)
    kept = {r.attempt_id: r for r in store.get_replicas([t.id for t in ts])}
    assert [kept[r.attempt_id] for r in replicas] == replicas


def test_a_row_given_twice_in_one_call_ends_as_the_last_says(store: Store) -> None:
    (task,) = leased_job(store, tasks=1)
    (leased,) = store.lease_tasks([attempt("a1", task)])
    first = Attempt(**{**vars(leased), "state": AttemptState.SUCCEEDED, "finished_at": 3.0})
    last = Attempt(**{**vars(leased), "state": AttemptState.REJECTED, "error": "outvoted"})
    store.update_attempts([first, last])
    assert store.get_attempts(["a1"]) == [last]
    done = Task(**{**vars(task), "state": TaskState.SUCCEEDED, "node_id": "n1"})
    failed = Task(**{**vars(task), "state": TaskState.FAILED, "error": "no agreement"})
    store.update_tasks([done, failed])
    assert store.list_tasks("j1") == [failed]


def test_node_failures_count_failed_expired_and_rejected(store: Store) -> None:
    ts = leased_job(store, tasks=5)
    states = [
        ("n1", AttemptState.FAILED),
        ("n1", AttemptState.EXPIRED),
        ("n2", AttemptState.REJECTED),
        ("n2", AttemptState.SUCCEEDED),
        ("n3", AttemptState.CANCELLED),
    ]
    attempts = [
        attempt(f"a{i}", t, node=n) for i, (t, (n, _)) in enumerate(zip(ts, states, strict=True))
    ]
    store.lease_tasks(attempts)
    for a, (_, state) in zip(attempts, states, strict=True):
        a.state = state
    store.update_attempts(attempts)
    other = leased_job(store, "j2", tasks=1)
    store.lease_tasks([Attempt("b1", other[0].id, "j2", "n1", 0, 1.0, AttemptState.FAILED)])
    assert store.node_failures("j1") == {"n1": 2, "n2": 1}
    assert store.node_failures("j2") == {"n1": 1}
    assert store.node_failures("none") == {}


# nodes


def test_upsert_node_keeps_counters_and_first_seen(store: Store) -> None:
    store.upsert_node(node("n1", last_seen=5.0))
    store.add_node_counts("n1", succeeded=3, failed=1)
    again = node("n1", last_seen=9.0)
    again.first_seen, again.name, again.public_key = 9.0, "renamed", b"\x02new"
    again.devices, again.software, again.executors = [], {"blender": "5.0"}, {"render": "2"}
    store.upsert_node(again)
    got = store.get_node("n1")
    assert got is not None
    assert (got.first_seen, got.last_seen, got.tasks_succeeded, got.tasks_failed) == (5, 9, 3, 1)
    assert (got.name, got.public_key, got.devices) == ("renamed", b"\x02new", [])
    assert (got.software, got.executors) == ({"blender": "5.0"}, {"render": "2"})


def test_touch_nodes_moves_last_seen_forward_in_bulk(store: Store) -> None:
    for node_id in ("n1", "n2", "n3"):
        store.upsert_node(node(node_id, last_seen=10.0))
    store.touch_nodes({"n1": 20.0, "n2": 5.0, "gone": 30.0})  # n2: never back; gone: no row
    got = {n.id: n.last_seen for n in store.list_nodes()}
    assert got == {"n1": 20.0, "n2": 10.0, "n3": 10.0}
    store.touch_nodes({})
    assert store.get_node("gone") is None


def test_nodes_are_listed_and_counted(store: Store) -> None:
    store.upsert_node(node("n2"))
    store.upsert_node(node("n1"))
    store.add_node_counts("n1", 2, 0)
    store.add_node_counts("n1", 1, 4)
    store.add_node_counts("nobody", 1, 1)
    assert [n.id for n in store.list_nodes()] == ["n1", "n2"]
    assert store.get_node("n2") == node("n2")
    got = store.get_node("n1")
    assert got is not None and (got.tasks_succeeded, got.tasks_failed) == (3, 4)
    assert store.get_node("nobody") is None


# blobs


def test_blob_owners(store: Store) -> None:
    store.add_blob_owners(["d1", "d2"], "acc-alice")
    store.add_blob_owners(["d1"], "acc-alice")  # again: no error
    store.add_blob_owners(["d1"], "acc-bob")
    assert store.blob_owned("d1", "acc-alice") and store.blob_owned("d1", "acc-bob")
    assert store.blob_owned("d2", "acc-alice")
    assert not store.blob_owned("d2", "acc-bob")
    assert not store.blob_owned("d3", "acc-alice")


def test_inline_blobs(store: Store) -> None:
    store.put_inline_blobs({"d1": b"\x00\xffdata", "d2": b""}, now=1.0)
    store.put_inline_blobs({"d1": b"\x00\xffdata"}, now=2.0)
    assert store.get_inline_blob("d1") == b"\x00\xffdata"
    assert store.get_inline_blob("d2") == b""
    assert store.get_inline_blob("d3") is None


# transactions


def write_everything(store: Store) -> None:
    store.create_account(account("alice"))
    store.post(grant("g1", ALICE, 50))
    ts = leased_job(store)
    store.lease_tasks([attempt("a1", ts[0])])
    store.upsert_node(node("n1"))
    store.put_inline_blobs({"d1": b"x"}, now=1.0, holder="alice")
    store.add_blob_owners(["d1"], "acc-alice")


def assert_nothing_written(store: Store) -> None:
    assert store.list_accounts() == []
    assert store.ledger_totals() == (0, 0, 0)
    assert store.balances() == {}
    assert store.get_job("j1") is None
    assert store.queued_tasks() == [] and store.get_attempts(["a1"]) == []
    assert store.list_nodes() == []
    assert store.get_inline_blob("d1") is None and not store.blob_owned("d1", "acc-alice")
    assert store.usage("alice") == (0, 0) and store.stale_blobs(before=10.0) == []


def test_transaction_rolls_back_everything_on_error(store: Store) -> None:
    with pytest.raises(RuntimeError), store.transaction():
        write_everything(store)
        assert store.balance(ALICE) == 50  # visible inside the transaction
        raise RuntimeError("abort")
    assert_nothing_written(store)


def test_transaction_commits_together(store: Store) -> None:
    with store.transaction():
        write_everything(store)
    assert store.balance(ALICE) == 50
    assert store.get_attempts(["a1"])[0].task_id == "j1-t0"


def test_nested_transactions_commit_with_the_outermost(store: Store) -> None:
    with pytest.raises(RuntimeError), store.transaction():
        with store.transaction():
            write_everything(store)
        with store.transaction(), store.transaction():
            store.post(grant("g2", BOB, 1))
        assert store.balance(BOB) == 1
        raise RuntimeError("abort")
    assert_nothing_written(store)
    with store.transaction():
        with pytest.raises(InsufficientFunds):
            store.post(transfer("t1", BOB, ALICE, 1))
        store.post(grant("g3", BOB, 2))
    assert store.balances() == {MINT: -2, BOB: 2}


def test_a_conflict_inside_a_transaction_undoes_only_that_call(store: Store) -> None:
    with store.transaction():
        ts = leased_job(store)
        store.lease_tasks([attempt("a1", ts[0])])
        clash, clash_tasks = job("j2")
        clash_tasks[1].id = ts[0].id
        with pytest.raises(Conflict):
            store.create_job(clash, clash_tasks)
        store.create_account(account("alice"))
    assert store.get_job("j2") is None and store.get_job("j1") is not None
    assert [(t.state, t.attempts) for t in store.list_tasks("j1")] == [
        (TaskState.LEASED, 1),
        (TaskState.QUEUED, 0),
    ]
    assert [a.task_id for a in store.get_attempts(["a1"])] == [ts[0].id]
    assert store.get_account_by_name("alice") is not None


def test_returned_objects_are_copies(store: Store) -> None:
    alice = account("alice")
    store.create_account(alice)
    alice.name = "mallory"
    got = store.get_account("acc-alice")
    assert got is not None and got.name == "alice"
    got.name = "eve"
    assert store.list_accounts()[0].name == "alice"
    j, ts = job("j1")
    store.create_job(j, ts)
    j.inputs["x"], ts[0].inputs[0].size = "y", 99
    got_job = store.get_job("j1")
    assert got_job is not None
    got_job.requirements.software["torch"] = "0.1"
    store.list_tasks("j1")[0].outputs.append(FileRef("o", "d", 1))
    store.queued_tasks()[0].inputs.clear()
    assert store.get_job("j1") == job("j1")[0]
    assert store.list_tasks("j1") == job("j1")[1]
    won = store.lease_tasks([attempt("a1", ts[1])])
    won[0].deadline = 0.0
    store.running_attempts()[0].state = AttemptState.FAILED
    assert store.get_attempts(["a1"]) == [attempt("a1", ts[1])]
    store.upsert_node(node("n1"))
    listed = store.list_nodes()[0]
    listed.devices[0].name, listed.software["x"] = "changed", "1"
    assert store.get_node("n1") == node("n1")


def test_calls_from_many_threads(store: Store) -> None:
    store.post(grant("g", ALICE, 1000))

    def pay(worker: int) -> None:
        for i in range(25):
            store.post(transfer(f"w{worker}-{i}", ALICE, node_account(str(worker)), 1))

    threads = [threading.Thread(target=pay, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.balance(ALICE) == 900
    assert store.ledger_totals() == (101, 202, 0)


def test_job_priority_and_webhook_round_trip(store: Store) -> None:
    j, tasks = job("j-hook")
    j.priority, j.webhook_url = -7, "https://hooks.example.com/x"
    store.create_job(j, tasks)
    got = store.get_job("j-hook")
    assert got is not None and (got.priority, got.webhook_url) == (-7, j.webhook_url)


def test_webhook_deliveries_are_due_in_time_order_until_settled(store: Store) -> None:
    from sparegrid.coordinator.domain import Delivery

    late = Delivery("d-late", "j1", "acc-alice", "https://h/x", b"\x00late", next_at=20.0)
    soon = Delivery("d-soon", "j2", "acc-alice", "https://h/y", b"soon", next_at=10.0)
    for d in (late, soon):
        store.add_webhook(d)
    assert [d.id for d in store.due_webhooks(15.0, 10)] == ["d-soon"]
    assert [d.id for d in store.due_webhooks(25.0, 10)] == ["d-soon", "d-late"]
    soon.attempts, soon.next_at, soon.last_error = 1, 30.0, "HTTP 500"
    store.update_webhook(soon)
    late.state, late.attempts, late.tried_at = "delivered", 1, 21.5
    store.update_webhook(late)
    assert store.due_webhooks(25.0, 10) == []
    [again] = store.due_webhooks(30.0, 10)
    assert (again.attempts, again.last_error, again.body) == (1, "HTTP 500", b"soon")
    [delivered] = store.get_webhooks("j1")
    assert (delivered.state, delivered.body) == ("delivered", b"\x00late")
    assert (delivered.tried_at, again.tried_at) == (21.5, 0.0)  # when each was last called


# task logs


def _log(attempt_id: str, job_id: str, index: int, at: float) -> AttemptLog:
    return AttemptLog(
        attempt_id, job_id, f"{job_id}-{index}", index, "n1", "EXECUTOR_ERROR",
        b"statement", b"signature", b"text \x1b\x00", b"k" * 32, at,
    )  # fmt: skip


def test_task_logs_are_kept_once_per_attempt_by_task_then_arrival(store: Store) -> None:
    store.add_task_logs([_log("a3", "j1", 1, 3.0), _log("a1", "j1", 0, 5.0)])
    store.add_task_logs([_log("a2", "j1", 0, 4.0), _log("b1", "j2", 0, 1.0)])
    store.add_task_logs([_log("a1", "j1", 0, 9.0)])  # an attempt's second log is ignored
    assert [x.attempt_id for x in store.task_logs("j1")] == ["a2", "a1", "a3"]
    assert [x.attempt_id for x in store.task_logs("j1", 1)] == ["a3"]
    assert store.task_logs("j1", 7) == [] and store.task_logs("nope") == []
    assert store.task_logs("j2") == [_log("b1", "j2", 0, 1.0)]  # every byte as stored
    assert (store.task_log_count("j1"), store.task_log_count("j2")) == (3, 1)
    pages = [store.task_logs("j1", offset=i, limit=2) for i in (0, 2, 4)]
    assert [[x.attempt_id for x in page] for page in pages] == [["a2", "a1"], ["a3"], []]


def test_the_first_claim_of_a_meta_value_stands(store: Store) -> None:
    assert store.claim_meta("coordinator_key", "aa11") == "aa11"
    assert store.claim_meta("coordinator_key", "bb22") == "aa11"  # another coordinator's
    assert store.claim_meta("other", "cc33") == "cc33"
