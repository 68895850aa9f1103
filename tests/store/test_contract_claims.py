"""The store contract for what failed attempts counted for (domain.Claim): written with
the attempt, read back for the open tasks of the jobs a coordinator loads, with the owner
each node answers for, and forgotten when a job is retried."""

from dataclasses import replace

from sparegrid.coordinator.domain import AttemptState, Claim, Task, TaskState
from sparegrid.coordinator.store.base import Store
from tests.store.builders import attempt, leased_job, node


def test_claims_are_read_back_for_open_tasks_of_the_jobs_named_only(store: Store) -> None:
    ts = leased_job(store, tasks=4)
    other = leased_job(store, "j2", tasks=1)
    owned = replace(node("n1"), owner="alice")
    store.upsert_node(owned)
    attempts = [
        attempt("a0", ts[0], node="n1"),
        attempt("a1", ts[1], node="n2"),  # a node not known: it answers for itself
        attempt("a2", ts[2], node="n1"),
        attempt("a3", ts[3], node="n1"),
        attempt("b0", other[0], node="n1"),
    ]
    for a, at in zip(attempts, (3.0, 1.0, 2.0, 4.0, 5.0), strict=True):
        a.created_at = at
    store.lease_tasks(attempts)
    claims = [
        Claim.COUNTED | Claim.FINAL,
        Claim.FAULT | Claim.KEPT_OFF,
        Claim(0),
        Claim.DOUBTED,
        Claim.COUNTED | Claim.OUT_OF_MEMORY,
    ]
    for a, c in zip(attempts, claims, strict=True):
        a.state, a.claims = AttemptState.FAILED, c
    store.update_attempts(attempts)
    ended = Task(**{**vars(ts[3]), "state": TaskState.SUCCEEDED})
    queued = Task(**{**vars(ts[1]), "state": TaskState.QUEUED})  # ts[0] stays leased
    store.update_tasks([ended, queued])
    found = [(a.id, a.claims, owner) for a, owner in store.failure_claims(["j1", "none"])]
    assert found == [  # oldest first; a2 carries none, a3's task ended, b0 is another job's
        ("a1", Claim.FAULT | Claim.KEPT_OFF, "node:n2"),
        ("a0", Claim.COUNTED | Claim.FINAL, "alice"),
    ]
    [(read, _)] = store.failure_claims(["j2"])
    assert read == attempts[4]
    store.clear_claims("j1")
    assert store.failure_claims(["j1"]) == []
    cleared = {a.id: a.claims for a in store.get_attempts(["a0", "a1", "b0"])}
    assert cleared == {"a0": Claim(0), "a1": Claim(0), "b0": Claim.COUNTED | Claim.OUT_OF_MEMORY}
    assert store.failure_claims([]) == []
