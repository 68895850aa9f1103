"""Proto <-> domain conversion, in one place."""

import json
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

from google.protobuf.timestamp_pb2 import Timestamp

from sparegrid.coordinator.domain import (
    MINT,
    Account,
    AttemptLog,
    Delivery,
    Device,
    Dispute,
    Event,
    FileRef,
    Invite,
    Job,
    JobState,
    LedgerEntry,
    Node,
    Reputation,
    Requirements,
    Task,
    TaskState,
    client_account,
    printable,
)
from sparegrid.coordinator.errors import invalid
from sparegrid.coordinator.kinds.render import still_name
from sparegrid.coordinator.services.jobs import JobSpec
from sparegrid.v1 import admin_pb2, client_pb2, common_pb2
from sparegrid.wire.codes import (
    DEVICE_KINDS,
    JOB_STATES,
    STANDINGS,
    TASK_STATES,
    WEBHOOK_STATES,
    WebhookState,
    names,
)

# requirements: DEVICE_KIND_UNSPECIFIED is "" (any kind)
_DEVICE_KINDS: dict[int, str] = {common_pb2.DEVICE_KIND_UNSPECIFIED: ""} | names(DEVICE_KINDS)


def timestamp(seconds: float | None) -> Timestamp | None:
    if seconds is None:
        return None
    ts = Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def device_kind(value: int) -> str:
    if value not in _DEVICE_KINDS:
        raise invalid("BAD_DEVICE", f"unknown device kind {value}")
    return _DEVICE_KINDS[value]


def device_from_pb(d: common_pb2.Device) -> Device:
    return Device(
        index=d.index,
        kind=device_kind(d.kind) or "cpu",
        # a node's words, shown in operators' terminals (admin nodes): no escapes
        name=printable(d.name[:200]),
        uuid=printable(d.uuid[:100]),
        memory_bytes=d.memory_bytes,
        compute_capability=printable(d.compute_capability[:16]),
        driver_version=printable(d.driver_version[:64]),
        backend=printable(d.backend[:32]),
    )


def device_to_pb(d: Device) -> common_pb2.Device:
    return common_pb2.Device(
        index=d.index,
        kind=DEVICE_KINDS.get(d.kind, common_pb2.DEVICE_KIND_UNSPECIFIED),
        name=d.name,
        uuid=d.uuid,
        memory_bytes=d.memory_bytes,
        compute_capability=d.compute_capability,
        driver_version=d.driver_version,
        backend=d.backend,
    )


def spec_from_pb(request: client_pb2.SubmitJobRequest) -> JobSpec:
    spec = request.spec
    req = spec.requirements
    return JobSpec(
        kind=spec.kind,
        name=spec.name,
        params=spec.params,
        inputs=dict(spec.inputs),
        requirements=Requirements(
            device_kind=device_kind(req.device_kind),
            min_memory_bytes=req.min_memory_bytes,
            min_compute_capability=req.min_compute_capability,
            software=dict(req.software),
        ),
        max_attempts=spec.max_attempts,
        idempotency_key=request.idempotency_key[:200],
        replicas=spec.replicas,
        quorum=spec.quorum,
        priority=spec.priority,
        webhook_url=spec.webhook_url,
        keep_logs=spec.keep_logs,
    )


def job_to_pb(
    job: Job, counts: dict[TaskState, int], owner: str, waiting: str = ""
) -> common_pb2.Job:
    return common_pb2.Job(
        job_id=job.id,
        kind=job.kind,
        name=job.name,
        state=JOB_STATES[job.state],
        counts=common_pb2.JobCounts(
            total=job.task_count,
            queued=counts[TaskState.QUEUED],
            leased=counts[TaskState.LEASED],
            succeeded=counts[TaskState.SUCCEEDED],
            failed=counts[TaskState.FAILED],
            cancelled=counts[TaskState.CANCELLED],
        ),
        cost_held=job.cost_held,
        cost_spent=job.cost_spent,
        replicas=job.replicas,
        quorum=job.quorum,
        error=job.error,
        created_at=timestamp(job.created_at),
        finished_at=timestamp(job.finished_at),
        owner=owner,
        waiting=waiting,
        priority=job.priority,
        has_webhook=bool(job.webhook_url),
        still=still_name(job.params) if job.kind == "render" else "",
    )


def delivery_to_pb(delivery: Delivery, max_attempts: int) -> common_pb2.WebhookDelivery:
    """A job's webhook call as its owner sees it: never the URL's body sent, nor the
    secret; the error already cleaned (services/webhooks.py's public_error)."""
    pending = delivery.state == WebhookState.PENDING
    return common_pb2.WebhookDelivery(
        state=WEBHOOK_STATES.get(delivery.state, common_pb2.WEBHOOK_STATE_UNSPECIFIED),
        attempts=delivery.attempts,
        max_attempts=max(max_attempts, delivery.attempts),
        last_error=delivery.last_error,
        next_attempt_at=timestamp(delivery.next_at) if pending else None,
        last_attempt_at=timestamp(delivery.tried_at) if delivery.tried_at else None,
        delivery_id=delivery.id,
    )


def refs_to_pb(refs: list[FileRef]) -> list[common_pb2.OutputRef]:
    return [common_pb2.OutputRef(name=r.name, digest=r.digest, size=r.size) for r in refs]


def task_result_to_pb(task: Task, inline: dict[str, bytes]) -> client_pb2.TaskResult:
    result = client_pb2.TaskResult(
        task_id=task.id,
        index=task.index,
        state=TASK_STATES[task.state],
        node_id=task.node_id,
        outputs=refs_to_pb(task.outputs),
        error=task.error,
        inline_outputs=inline,
    )
    if task.receipt:
        result.receipt.ParseFromString(task.receipt)
    return result


def account_to_pb(account: Account, balance: int) -> admin_pb2.Account:
    return admin_pb2.Account(
        name=account.name,
        balance=balance,
        is_admin=account.is_admin,
        created_at=timestamp(account.created_at),
        disabled=account.disabled,
        has_key=account.has_key,
    )


def invite_to_pb(invite: Invite) -> admin_pb2.Invite:
    return admin_pb2.Invite(
        id=invite.id,
        uses=invite.uses,
        used=invite.used,
        credit=invite.credit,
        note=invite.note,
        created_at=timestamp(invite.created_at),
        expires_at=timestamp(invite.expires_at or None),
        revoked=invite.revoked,
    )


# An idempotency key is stored in a unique index, whose rows PostgreSQL bounds (8 KiB): a
# key of 10 kB failed the whole group commit
MAX_IDEMPOTENCY_KEY = 200


def idempotency_key(given: str) -> str:
    """A caller's idempotency key, or a fresh one when it gave none; INVALID_ARGUMENT past
    MAX_IDEMPOTENCY_KEY characters."""
    if len(given) > MAX_IDEMPOTENCY_KEY:
        raise invalid(
            "BAD_IDEMPOTENCY_KEY",
            f"an idempotency key is at most {MAX_IDEMPOTENCY_KEY} characters, got {len(given)}",
        )
    return given or uuid.uuid4().hex


def job_states_from_pb(states: Iterable[int]) -> list[JobState]:
    """Domain job states from a request's filter, each once; an unknown one is a bad
    request. Each becomes a bound parameter: 70,000 repeats of one state passed the 65,535
    PostgreSQL takes in a statement, whose refusal read as a lost database."""
    by_pb: dict[int, str] = {pb: state for state, pb in JOB_STATES.items()}
    wanted: dict[JobState, None] = {}
    for value in states:
        if value not in by_pb:
            raise invalid("BAD_STATE", f"job state {value} is not one a job can be in")
        wanted[JobState(by_pb[value])] = None
    return list(wanted)


@dataclass
class NodeView:
    """What the coordinator knows of a node beyond its record: for `admin nodes`."""

    state: int  # admin_pb2.NodeState
    credit: int
    reputation: Reputation
    check_rate: float
    vetted_reason: str  # "" when its results count as votes
    window: int
    in_flight: int


def node_to_pb(node: Node, view: NodeView) -> admin_pb2.Node:
    rep = view.reputation
    return admin_pb2.Node(
        vetted=not view.vetted_reason,
        vetted_reason=view.vetted_reason,
        window=view.window,
        in_flight=view.in_flight,
        owner=node.owner,
        standing=STANDINGS[rep.standing],
        standing_reason=rep.reason,
        streak=rep.streak,
        validated=rep.validated,
        invalid=rep.invalid,
        strikes=rep.strikes,
        check_rate=view.check_rate,
        node_id=node.id,
        name=node.name,
        devices=[device_to_pb(d) for d in node.devices],
        state=view.state,  # type: ignore[arg-type]
        tasks_succeeded=node.tasks_succeeded,
        tasks_failed=node.tasks_failed,
        credit=view.credit,
        last_seen=timestamp(node.last_seen),
        software=node.software,
    )


def entry_to_pb(entry: LedgerEntry) -> admin_pb2.LedgerEntry:
    return admin_pb2.LedgerEntry(
        transaction_id=entry.transaction_id,
        account=entry.account,
        amount=entry.amount,
        reason=entry.reason,
        job_id=entry.job_id,
        task_id=entry.task_id,
        created_at=timestamp(entry.created_at),
    )


def dispute_to_pb(dispute: Dispute) -> common_pb2.Dispute:
    return common_pb2.Dispute(
        task_index=dispute.task_index,
        task_id=dispute.task_id,
        state=dispute.state.value,
        evidence_json=json.dumps(dispute.evidence, sort_keys=True),
        updated_at=timestamp(dispute.updated_at),
    )


def event_to_pb(event: Event) -> admin_pb2.Event:
    return admin_pb2.Event(
        seq=event.seq,
        id=event.id,
        at=timestamp(event.at),
        kind=event.kind,
        message=event.message,
        job_id=event.job_id,
        task_id=event.task_id,
        node_id=event.node_id,
        account=event.account,
        data_json=json.dumps(event.data, sort_keys=True, default=str),
    )


def attempt_log_to_pb(log: AttemptLog) -> client_pb2.AttemptLog:
    return client_pb2.AttemptLog(
        task_index=log.task_index,
        task_id=log.task_id,
        attempt_id=log.attempt_id,
        node_id=log.node_id,
        outcome=log.outcome,
        log=common_pb2.TaskLog(statement=log.statement, signature=log.signature, text=log.text),
        public_key=log.public_key,
        received_at=timestamp(log.received_at),
    )


def ledger_account(name: str) -> str:
    """The ledger account an operator names: an account's name (`alice`, as `admin ledger
    entries --account` takes it) is its client account; a ledger id (`node:...`,
    `escrow:...`, `mint`) is itself. Account names hold no ':'."""
    if not name or name == MINT or ":" in name:
        return name
    return client_account(name)
