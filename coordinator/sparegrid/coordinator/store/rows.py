"""Conversions between the domain dataclasses and SQL rows.

Each record has its column list, in the order of its dataclass fields, a function making
the parameters of an INSERT and one reading a row back. Times are unix seconds, bytes
are bytes, and lists and dicts are JSON text.
"""

import json
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from sparegrid.coordinator.domain import (
    Account,
    Attempt,
    AttemptLog,
    AttemptState,
    Claim,
    Delivery,
    Device,
    Dispute,
    DisputeState,
    FileRef,
    Job,
    JobState,
    LedgerEntry,
    Node,
    Posting,
    Replica,
    ReplicaState,
    Reputation,
    Requirements,
    Standing,
    Task,
    TaskState,
    Transaction,
)

Row = Sequence[Any]
Params = tuple[object, ...]

ACCOUNT_COLUMNS = "id, name, key_hash, is_admin, created_at, disabled"
JOB_COLUMNS = (
    "id, account_id, kind, name, params, inputs, requirements, max_attempts, price_credit,"
    " price_units, task_count, state, cost_held, cost_spent, error, created_at, finished_at,"
    " idempotency_key, replicas, quorum, tasks_succeeded, tasks_failed, priority, webhook_url,"
    " keep_logs"
)
TASK_COLUMNS = (
    "id, job_id, idx, params, inputs, state, attempts, node_id, outputs, receipt, error, work"
)
ATTEMPT_COLUMNS = (
    "id, task_id, job_id, node_id, device_index, deadline, state, created_at, finished_at,"
    " error_code, error, params, claims"
)
NODE_COLUMNS = (
    "id, public_key, name, devices, software, executors, first_seen, last_seen,"
    " tasks_succeeded, tasks_failed, owner"
)
REPLICA_COLUMNS = (
    "attempt_id, task_id, job_id, node_id, owner, outputs, receipt, state, created_at, params"
)
REPUTATION_COLUMNS = "node_id, streak, validated, invalid, strikes, standing, reason, updated_at"
ENTRY_COLUMNS = "transaction_id, account, amount, reason, job_id, task_id, created_at"
DISPUTE_COLUMNS = "task_id, job_id, task_index, state, evidence, created_at, updated_at"


def placeholders(columns: str) -> str:
    """ "?, ?, ..." with one "?" per column of a column list."""
    return ", ".join("?" for _ in columns.split(","))


# one encoder for every row: json.dumps builds a new one per call when given options, a
# few microseconds twice per result with tiny tasks
_ENCODE = json.JSONEncoder(separators=(",", ":"), sort_keys=True).encode


def to_json(value: object) -> str:
    return _ENCODE(value)


def refs_json(refs: list[FileRef]) -> str:
    if not refs:  # most tasks' outputs while queued, every echo task's inputs
        return "[]"
    # vars, not asdict: asdict deep-copies every field (a tenth of a settle's time)
    return to_json([vars(r) for r in refs])


def refs_from(text: str) -> list[FileRef]:
    if text == "[]":  # refs_json's own: no parse for every queued task read back
        return []
    return [FileRef(**r) for r in json.loads(text)]


def optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def account_params(a: Account) -> Params:
    return (a.id, a.name, a.key_hash, a.is_admin, a.created_at, a.disabled)


def account_from(row: Row) -> Account:
    return Account(row[0], row[1], row[2], bool(row[3]), float(row[4]), bool(row[5]))


def job_params(j: Job) -> Params:
    return (
        j.id,
        j.account_id,
        j.kind,
        j.name,
        j.params,
        to_json(j.inputs),
        to_json(asdict(j.requirements)),
        j.max_attempts,
        j.price_credit,
        j.price_units,
        j.task_count,
        j.state.value,
        j.cost_held,
        j.cost_spent,
        j.error,
        j.created_at,
        j.finished_at,
        j.idempotency_key,
        j.replicas,
        j.quorum,
        j.tasks_succeeded,
        j.tasks_failed,
        j.priority,
        j.webhook_url,
        j.keep_logs,
    )


def job_from(row: Row) -> Job:
    return Job(
        id=row[0],
        account_id=row[1],
        kind=row[2],
        name=row[3],
        params=bytes(row[4]),
        inputs=json.loads(row[5]),
        requirements=Requirements(**json.loads(row[6])),
        max_attempts=row[7],
        price_credit=int(row[8]),
        price_units=int(row[9]),
        task_count=row[10],
        state=JobState(row[11]),
        cost_held=row[12],
        cost_spent=row[13],
        error=row[14],
        created_at=float(row[15]),
        finished_at=optional_float(row[16]),
        idempotency_key=row[17],
        replicas=row[18],
        quorum=row[19],
        tasks_succeeded=int(row[20]),
        tasks_failed=int(row[21]),
        priority=int(row[22]),
        webhook_url=row[23],
        keep_logs=bool(row[24]),
    )


def task_params(t: Task) -> Params:
    return (
        t.id,
        t.job_id,
        t.index,
        t.params,
        refs_json(t.inputs),
        t.state.value,
        t.attempts,
        t.node_id,
        refs_json(t.outputs),
        t.receipt,
        t.error,
        t.work,
    )


def task_update_params(t: Task) -> Params:
    """The parameters of update_tasks: what changes, then the id."""
    return (
        t.state.value,
        t.attempts,
        t.node_id,
        refs_json(t.outputs),
        t.receipt,
        t.error,
        t.id,
    )


def task_from(row: Row) -> Task:
    return Task(
        id=row[0],
        job_id=row[1],
        index=row[2],
        params=bytes(row[3]),
        inputs=refs_from(row[4]),
        state=TaskState(row[5]),
        attempts=row[6],
        node_id=row[7],
        outputs=refs_from(row[8]),
        receipt=bytes(row[9]),
        error=row[10],
        work=int(row[11]),
    )


def attempt_params(a: Attempt) -> Params:
    return (
        a.id,
        a.task_id,
        a.job_id,
        a.node_id,
        a.device_index,
        a.deadline,
        a.state.value,
        a.created_at,
        a.finished_at,
        a.error_code,
        a.error,
        a.params,
        int(a.claims),
    )


def attempt_from(row: Row) -> Attempt:
    return Attempt(
        id=row[0],
        task_id=row[1],
        job_id=row[2],
        node_id=row[3],
        device_index=row[4],
        deadline=float(row[5]),
        state=AttemptState(row[6]),
        created_at=float(row[7]),
        finished_at=optional_float(row[8]),
        error_code=row[9],
        error=row[10],
        params=bytes(row[11] or b""),
        claims=Claim(int(row[12])),
    )


def node_params(n: Node) -> Params:
    return (
        n.id,
        n.public_key,
        n.name,
        to_json([vars(d) for d in n.devices]),  # flat: asdict's deep copy costs 10x
        to_json(n.software),
        to_json(n.executors),
        n.first_seen,
        n.last_seen,
        n.tasks_succeeded,
        n.tasks_failed,
        n.owner,
    )


def node_from(row: Row) -> Node:
    return Node(
        id=row[0],
        public_key=bytes(row[1]),
        name=row[2],
        devices=[Device(**d) for d in json.loads(row[3])],
        software=json.loads(row[4]),
        executors=json.loads(row[5]),
        first_seen=float(row[6]),
        last_seen=float(row[7]),
        tasks_succeeded=row[8],
        tasks_failed=row[9],
        owner=row[10],
    )


def replica_params(p: Replica) -> Params:
    return (
        p.attempt_id,
        p.task_id,
        p.job_id,
        p.node_id,
        p.owner,
        refs_json(p.outputs),
        p.receipt,
        p.state.value,
        p.created_at,
        p.params,
    )


def replica_from(row: Row) -> Replica:
    return Replica(
        attempt_id=row[0],
        task_id=row[1],
        job_id=row[2],
        node_id=row[3],
        owner=row[4],
        outputs=refs_from(row[5]),
        receipt=bytes(row[6]),
        state=ReplicaState(row[7]),
        created_at=float(row[8]),
        params=bytes(row[9] or b""),
    )


def reputation_params(p: Reputation) -> Params:
    return (
        p.node_id,
        p.streak,
        p.validated,
        p.invalid,
        p.strikes,
        p.standing.value,
        p.reason,
        p.updated_at,
    )


def reputation_from(row: Row) -> Reputation:
    return Reputation(
        node_id=row[0],
        streak=int(row[1]),
        validated=int(row[2]),
        invalid=int(row[3]),
        strikes=int(row[4]),
        standing=Standing(row[5]),
        reason=row[6],
        updated_at=float(row[7]),
    )


def entry_params(txn: Transaction, posting: Posting) -> Params:
    return (
        txn.id,
        posting.account,
        posting.amount,
        txn.reason,
        txn.job_id,
        txn.task_id,
        txn.created_at,
    )


def entry_from(row: Row) -> LedgerEntry:
    return LedgerEntry(row[0], row[1], int(row[2]), row[3], row[4], row[5], float(row[6]))


def dispute_params(d: Dispute) -> Params:
    evidence = json.dumps(d.evidence, sort_keys=True)
    return (d.task_id, d.job_id, d.task_index, d.state.value, evidence, d.created_at, d.updated_at)


def dispute_from(row: Row) -> Dispute:
    return Dispute(
        task_id=row[0],
        job_id=row[1],
        task_index=row[2],
        state=DisputeState(row[3]),
        evidence=json.loads(row[4]),
        created_at=row[5],
        updated_at=row[6],
    )


WEBHOOK_COLUMNS = (
    "id, job_id, account_id, url, body, attempts, next_at, state, last_error, created_at, tried_at"
)


def webhook_params(d: Delivery) -> Params:
    return (
        d.id,
        d.job_id,
        d.account_id,
        d.url,
        d.body,
        d.attempts,
        d.next_at,
        d.state,
        d.last_error,
        d.created_at,
        d.tried_at,
    )


def webhook_from(row: Row) -> Delivery:
    return Delivery(
        id=row[0],
        job_id=row[1],
        account_id=row[2],
        url=row[3],
        body=bytes(row[4]),
        attempts=int(row[5]),
        next_at=float(row[6]),
        state=row[7],
        last_error=row[8],
        created_at=float(row[9]),
        tried_at=float(row[10]),
    )


TASK_LOG_COLUMNS = (
    "attempt_id, job_id, task_id, task_index, node_id, outcome, statement, signature, text,"
    " public_key, received_at"
)


def task_log_params(log: AttemptLog) -> Params:
    return (
        log.attempt_id,
        log.job_id,
        log.task_id,
        log.task_index,
        log.node_id,
        log.outcome,
        log.statement,
        log.signature,
        log.text,
        log.public_key,
        log.received_at,
    )


def task_log_from(row: Row) -> AttemptLog:
    return AttemptLog(
        attempt_id=row[0],
        job_id=row[1],
        task_id=row[2],
        task_index=int(row[3]),
        node_id=row[4],
        outcome=row[5],
        statement=bytes(row[6]),
        signature=bytes(row[7]),
        text=bytes(row[8]),
        public_key=bytes(row[9]),
        received_at=float(row[10]),
    )
