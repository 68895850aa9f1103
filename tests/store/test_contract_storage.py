"""The store contract for storage limits: unfinished uploads, blobs and their charges,
what live jobs reference, and nodes that never worked; on every backend."""

from sparegrid.coordinator.domain import (
    FileRef,
    JobState,
    Posting,
    Reputation,
    Standing,
    Transaction,
    node_account,
)
from sparegrid.coordinator.store.base import LiveJob, Store, Usage
from tests.store.builders import attempt, job, node, replica

A, B, C = "a" * 64, "b" * 64, "c" * 64


def test_unfinished_uploads_count_against_their_holder_and_pool(store: Store) -> None:
    store.put_partial("acc-alice", A, "alice", False, 100, now=10.0)
    store.put_partial("acc-alice", B, "alice", False, 50, now=11.0)
    store.put_partial("node-n1", A, "node:n1", True, 7, now=12.0)
    store.put_partial("node-n2", C, "node:n2", True, 9, now=13.0)
    assert store.usage("alice") == Usage(150, 0)
    assert store.usage("node:n1") == Usage(7, 0)
    assert store.anonymous_usage() == Usage(16, 0)
    store.put_partial("acc-alice", A, "alice", False, 30, now=20.0)  # resumed, smaller
    assert store.usage("alice") == Usage(80, 0)
    assert store.stale_partials(before=13.0) == [("acc-alice", B), ("node-n1", A)]
    assert store.stale_partials(before=100.0, limit=1) == [("acc-alice", B)]
    store.drop_partials([("acc-alice", B), ("node-n1", A), ("nobody", A)])
    assert store.usage("alice") == Usage(30, 0) and store.anonymous_usage() == Usage(9, 0)


def test_a_blob_is_charged_once_per_holder_until_the_charge_expires(store: Store) -> None:
    store.record_blob(A, 100, now=10.0, holder="alice")
    store.record_blob(A, 100, now=12.0, holder="alice")  # uploaded again: charged once
    store.record_blob(A, 100, now=11.0, holder="node:n1", anonymous=True)
    store.record_blob(B, 40, now=13.0, holder="node:n2", anonymous=True)
    store.record_blob(C, 5, now=14.0)  # named again by a node: a use, no charge
    assert store.usage("alice") == Usage(0, 100)
    assert store.anonymous_usage() == Usage(0, 140)
    assert store.expire_charges(before=12.0) == 1  # node:n1's, from 11.0
    assert store.usage("alice") == Usage(0, 100) and store.anonymous_usage() == Usage(0, 40)


def test_blobs_are_found_by_last_use_and_dropped_with_their_charges(store: Store) -> None:
    store.record_blob(A, 100, now=10.0, holder="alice")
    store.record_blob(B, 40, now=5.0, holder="bob")
    store.record_blob(C, 1, now=20.0)
    store.record_blob(B, 40, now=3.0)  # an older use never moves the last use back
    store.add_blob_owners([A, B], "acc-alice")
    assert store.stale_blobs(before=15.0) == [(B, 40), (A, 100)]
    assert store.stale_blobs(before=15.0, limit=1) == [(B, 40)]
    assert store.blob_uses([A, B, C, "nope"], before=15.0) == [A, B]
    store.record_blob(B, 40, now=30.0)
    assert store.stale_blobs(before=15.0) == [(A, 100)]
    assert store.blob_uses([A, B, C], before=15.0) == [A]
    store.drop_blobs([A])
    assert store.stale_blobs(before=100.0) == [(C, 1), (B, 40)]
    assert store.usage("alice") == Usage(0, 0) and store.usage("bob") == Usage(0, 40)
    assert not store.blob_owned(A, "acc-alice") and store.blob_owned(B, "acc-alice")


def test_inline_blobs_are_recorded_charged_and_dropped_like_uploads(store: Store) -> None:
    """Outputs sent inline are blobs kept in the database: a use now, a charge to the
    node's holder (once per blob), and bytes dropped with their record."""
    store.put_inline_blobs({A: b"a" * 10, B: b"b" * 4}, now=10.0, holder="node:n1", anonymous=True)
    store.put_inline_blobs({A: b"a" * 10}, now=12.0, holder="node:n1", anonymous=True)  # once
    store.put_inline_blobs({A: b"a" * 10}, now=11.0, holder="carol")
    store.put_inline_blobs({}, now=13.0, holder="carol")
    assert store.usage("node:n1") == Usage(0, 14) and store.anonymous_usage() == Usage(0, 14)
    assert store.usage("carol") == Usage(0, 10)
    assert store.charged("node:n1", [A, B, C]) == {A, B} and store.charged("carol", [B]) == set()
    assert store.stale_blobs(before=100.0) == [(B, 4), (A, 10)]  # A last used at 12.0
    store.record_blob(C, 3, now=14.0)  # a file, whose bytes also come inline: a file still
    store.put_inline_blobs({C: b"ccc"}, now=15.0)
    assert store.drop_blobs([A, C, "nope"]) == {A}  # C has a file to delete
    assert store.get_inline_blob(A) is None and store.get_inline_blob(C) is None
    assert store.get_inline_blob(B) == b"b" * 4
    assert store.usage("carol") == Usage(0, 0) and store.usage("node:n1") == Usage(0, 4)
    assert store.expire_charges(before=100.0) == 1
    assert store.anonymous_usage() == Usage(0, 0) and store.get_inline_blob(B) == b"b" * 4
    assert store.adopt_blobs([(B, 4, 1.0)]) == 0  # found as a file too: no longer inline only
    assert store.drop_blobs([B]) == set()


def test_inline_blobs_charged_by_a_caller_that_says_which_are_fresh(store: Store) -> None:
    """A batch of results knows which of its blobs it read as charged already: told so,
    the store charges the same as when it reads them itself."""
    store.put_inline_blobs({A: b"a" * 10}, now=10.0, holder="carol")
    both = {A: b"a" * 10, B: b"b" * 4, C: b""}
    store.put_inline_blobs(both, now=11.0, holder="carol", fresh={B, C})
    assert store.usage("carol") == Usage(0, 14)
    assert store.charged("carol", [A, B, C]) == {A, B, C}
    store.put_inline_blobs(both, now=12.0, holder="carol", fresh=set())  # all renewed
    assert store.usage("carol") == Usage(0, 14)


def test_files_stored_before_blobs_were_recorded_are_adopted(store: Store) -> None:
    store.record_blob(A, 100, now=50.0)
    assert store.adopt_blobs([(A, 100, 1.0), (B, 7, 2.0), (B, 7, 2.0)]) == 1
    assert store.adopt_blobs([]) == 0
    assert store.stale_blobs(before=60.0) == [(B, 7), (A, 100)]  # A keeps its last use


def test_live_jobs_and_the_blobs_their_tasks_name(store: Store) -> None:
    live, live_tasks = job("j1", tasks=3)  # replica() names job j1
    live.inputs = {"model": A}
    live_tasks[1].outputs = [FileRef("out", B, 3)]
    recent, _ = job("recent", tasks=1)
    recent.state, recent.finished_at = JobState.SUCCEEDED, 100.0
    old, _ = job("old", tasks=1)
    old.state, old.finished_at = JobState.FAILED, 10.0
    for j, ts in ((live, live_tasks), (recent, []), (old, [])):
        store.create_job(j, ts)
    store.update_job(recent)
    store.update_job(old)
    store.update_tasks(live_tasks)
    store.add_replicas([replica("r1", live_tasks[2].id)])
    assert store.live_jobs(finished_after=50.0) == {
        "j1": LiveJob(1.0, {A}),
        "recent": LiveJob(1.0, {"sha256:abc"}),
    }
    first, after = store.task_blob_refs("j1", limit=2)
    assert (first, after) == ({"d0", "d1", B}, 1)
    rest, after = store.task_blob_refs("j1", after_index=1, limit=2)
    assert (rest, after) == ({"d2", "digest-r1"}, None)
    assert store.task_blob_refs("j1", after_index=2) == (set(), None)
    assert store.task_blob_refs("nope") == (set(), None)


def test_idle_nodes_never_worked_and_keep_no_decision(store: Store) -> None:
    for node_id in ("idle", "pending", "worked", "paid", "banned", "recent"):
        store.upsert_node(node(node_id, last_seen=1.0 if node_id != "recent" else 50.0))
    store.put_reputations(
        [
            Reputation("pending", standing=Standing.PENDING),
            Reputation("banned", standing=Standing.BANNED),
        ]
    )
    j, ts = job("j1", tasks=1)
    store.create_job(j, ts)
    store.lease_tasks([attempt("a1", ts[0], node="worked")])
    grant = Transaction(
        "t1", "t1", "grant", [Posting("mint", -1), Posting(node_account("paid"), 1)]
    )
    store.post(grant)
    assert store.idle_nodes(seen_before=10.0) == ["idle", "pending"]
    assert store.idle_nodes(seen_before=10.0, limit=1) == ["idle"]
    store.delete_nodes(["idle", "pending", "banned"])
    assert store.get_node("idle") is None and store.get_node("pending") is None
    assert [r.node_id for r in store.get_reputations()] == ["banned"]  # not a pending one
    assert store.idle_nodes(seen_before=100.0) == ["recent"]


def test_storage_writes_roll_back_with_their_transaction(store: Store) -> None:
    store.record_blob(A, 1, now=1.0, holder="alice")
    try:
        with store.transaction():
            store.put_partial("acc-alice", B, "alice", False, 10, now=2.0)
            store.record_blob(C, 5, now=2.0, holder="alice")
            store.drop_blobs([A])
            raise RuntimeError("undo")
    except RuntimeError:
        pass
    assert store.usage("alice") == Usage(0, 1)
    assert store.stale_blobs(before=10.0) == [(A, 1)]


def test_totals_follow_a_reservation_or_a_charge_that_changes_holder(store: Store) -> None:
    """A node that proves an owner account later resumes its upload under the owner."""
    store.put_partial("node-n1", A, "node:n1", True, 100, now=1.0)
    store.put_partial("node-n1", A, "alice", False, 120, now=2.0)
    assert store.usage("node:n1") == Usage(0, 0) and store.anonymous_usage() == Usage(0, 0)
    assert store.usage("alice") == Usage(120, 0)
    store.record_blob(B, 10, now=1.0, holder="node:n2", anonymous=True)
    store.record_blob(B, 12, now=2.0, holder="node:n2", anonymous=True)  # size corrected
    assert store.usage("node:n2") == Usage(0, 12) and store.anonymous_usage() == Usage(0, 12)
    store.drop_partials([("node-n1", A)])
    store.drop_blobs([B])
    for holder in ("alice", "node:n1", "node:n2"):
        assert store.usage(holder) == Usage(0, 0)
    assert store.anonymous_usage() == Usage(0, 0)
