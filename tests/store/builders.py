"""Records the store contract tests build: accounts, jobs, tasks, attempts, nodes, replicas."""

from sparegrid.coordinator.domain import (
    MINT,
    Account,
    Attempt,
    Device,
    FileRef,
    Job,
    Node,
    Posting,
    Replica,
    Requirements,
    Task,
    Transaction,
    client_account,
)
from sparegrid.coordinator.store.base import Store


def account(name: str, created_at: float = 1.0) -> Account:
    return Account(f"acc-{name}", name, f"hash-{name}", name == "root", created_at)


def job(
    job_id: str,
    account_id: str = "acc-alice",
    created_at: float = 1.0,
    key: str = "",
    tasks: int = 2,
) -> tuple[Job, list[Task]]:
    j = Job(
        id=job_id,
        account_id=account_id,
        kind="echo",
        name=f"job {job_id}",
        params=b"\x00params",
        inputs={"model": "sha256:abc"},
        requirements=Requirements("cuda", 8 << 30, "8.0", {"torch": "2.4"}),
        max_attempts=3,
        price_credit=5,
        price_units=1,
        task_count=tasks,
        cost_held=5 * tasks,
        created_at=created_at,
        idempotency_key=key,
    )
    ts = [
        Task(f"{job_id}-t{i}", job_id, i, bytes([i % 256]), [FileRef(f"in{i}", f"d{i}", i)])
        for i in range(tasks)
    ]
    return j, ts


def attempt(attempt_id: str, task: Task, node: str = "n1", deadline: float = 100.0) -> Attempt:
    return Attempt(attempt_id, task.id, task.job_id, node, 0, deadline, created_at=10.0)


def grant(key: str, to: str, amount: int) -> Transaction:
    return Transaction(key, key, "grant", [Posting(MINT, -amount), Posting(to, amount)])


def transfer(key: str, src: str, dst: str, amount: int, job_id: str = "") -> Transaction:
    postings = [Posting(src, -amount), Posting(dst, amount)]
    return Transaction(f"txn-{key}", key, "pay", postings, job_id=job_id, created_at=2.0)


def node(node_id: str, last_seen: float = 5.0) -> Node:
    return Node(
        node_id,
        b"\x01key",
        f"box {node_id}",
        [Device(0, "cuda", "H200", "GPU-1", 141 << 30, "9.0", "570", "cuda")],
        {"torch": "2.4"},
        {"echo": "1"},
        first_seen=last_seen,
        last_seen=last_seen,
    )


def leased_job(store: Store, job_id: str = "j1", tasks: int = 2) -> list[Task]:
    j, ts = job(job_id, tasks=tasks)
    store.create_job(j, ts)
    return ts


def replica(attempt_id: str, task_id: str, node_id: str = "n1", at: float = 1.0) -> Replica:
    return Replica(
        attempt_id,
        task_id,
        "j1",
        node_id,
        f"owner-{node_id}",
        [FileRef("out", f"digest-{attempt_id}", 3)],
        b"receipt-" + attempt_id.encode(),
        created_at=at,
    )


ALICE, BOB = client_account("alice"), client_account("bob")
