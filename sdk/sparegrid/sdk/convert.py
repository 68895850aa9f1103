"""The one place that turns SDK arguments into requests and responses into SDK data.

Shared by the sync and the asyncio clients so neither repeats this logic.
"""

import json
import math
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from google.protobuf import timestamp_pb2

from sparegrid.sdk.errors import InvalidArgumentError
from sparegrid.sdk.models import (
    Account,
    AttemptLog,
    Device,
    DeviceKind,
    Dispute,
    Estimate,
    Event,
    Info,
    Invite,
    JobCounts,
    JobSnapshot,
    JobState,
    KindInfo,
    LedgerCheck,
    LedgerEntry,
    Node,
    NodeCredit,
    OutputRef,
    Requirements,
    TaskState,
    WebhookDelivery,
    WebhookState,
)
from sparegrid.sdk.results import AsyncFetch, Fetch, TaskResult
from sparegrid.v1 import admin_pb2, client_pb2, common_pb2
from sparegrid.wire import BadSignature, codes, tasklog

_JOB_STATES = {v: JobState(k) for k, v in codes.JOB_STATES.items()}
_TASK_STATES = {v: TaskState(k) for k, v in codes.TASK_STATES.items()}
_WEBHOOK_STATES = {v: WebhookState(k) for k, v in codes.WEBHOOK_STATES.items()}
_DEVICE_KINDS = {DeviceKind.ANY: common_pb2.DEVICE_KIND_UNSPECIFIED} | {
    DeviceKind(k): v for k, v in codes.DEVICE_KINDS.items()
}
_NODE_STATES = codes.names(codes.NODE_STATES)
_STANDINGS = codes.names(codes.STANDINGS)


def new_idempotency_key() -> str:
    return str(uuid.uuid4())


def timestamp(msg: Any, name: str) -> datetime | None:
    """The datetime of a Timestamp field, or None when unset."""
    if not msg.HasField(name):
        return None
    value: timestamp_pb2.Timestamp = getattr(msg, name)
    return value.ToDatetime(tzinfo=UTC)


# --- requests ------------------------------------------------------------------------------


def encode_params(params: Mapping[str, Any] | None) -> bytes:
    try:
        return json.dumps(dict(params or {}), separators=(",", ":")).encode()
    except (TypeError, ValueError) as exc:
        raise InvalidArgumentError("BAD_PARAMS", f"job params are not JSON: {exc}") from exc


def requirements_pb(req: Requirements | None) -> common_pb2.Requirements | None:
    if req is None:
        return None
    return common_pb2.Requirements(
        device_kind=_DEVICE_KINDS[DeviceKind(req.device_kind)],
        min_memory_bytes=req.min_memory_bytes,
        min_compute_capability=req.min_compute_capability,
        software=dict(req.software),
    )


def submit_request(
    kind: str,
    params: Mapping[str, Any] | None = None,
    inputs: Mapping[str, str] | None = None,
    *,
    name: str = "",
    requirements: Requirements | None = None,
    max_attempts: int = 0,
    idempotency_key: str | None = None,
    replicas: int = 0,
    quorum: int = 0,
    priority: int = 0,
    webhook_url: str = "",
    keep_logs: bool = False,
) -> client_pb2.SubmitJobRequest:
    spec = client_pb2.JobSpec(
        kind=kind,
        name=name,
        params=encode_params(params),
        inputs=dict(inputs or {}),
        requirements=requirements_pb(requirements),
        max_attempts=max_attempts,
        replicas=replicas,
        quorum=quorum,
        priority=priority,
        webhook_url=webhook_url,
        keep_logs=keep_logs,
    )
    return client_pb2.SubmitJobRequest(
        spec=spec, idempotency_key=idempotency_key or new_idempotency_key()
    )


def invite_request(
    uses: int, expires_in: float, credit: int, note: str
) -> admin_pb2.CreateInviteRequest:
    """`expires_in` seconds (0: never) go as a Duration's whole seconds and nanoseconds, an
    int64: a time past that is refused here (BAD_EXPIRY, as the coordinator refuses one past
    ten years) rather than overflowing a timedelta (an OverflowError)."""
    request = admin_pb2.CreateInviteRequest(uses=uses, credit=credit, note=note)
    if expires_in:
        if not math.isfinite(expires_in) or abs(expires_in) >= 2**63:
            raise InvalidArgumentError(
                "BAD_EXPIRY",
                f"an invitation expires within ten years, or never; not in {expires_in:g} s",
            )
        request.expires_in.seconds = math.trunc(expires_in)
        request.expires_in.nanos = int((expires_in - math.trunc(expires_in)) * 1e9)
    return request


def grant_request(
    name: str, amount: int, reason: str = "", idempotency_key: str | None = None
) -> admin_pb2.GrantCreditRequest:
    return admin_pb2.GrantCreditRequest(
        name=name,
        amount=amount,
        reason=reason,
        idempotency_key=idempotency_key or new_idempotency_key(),
    )


# --- responses -----------------------------------------------------------------------------


def job_counts(msg: common_pb2.JobCounts) -> JobCounts:
    return JobCounts(
        total=msg.total,
        queued=msg.queued,
        leased=msg.leased,
        succeeded=msg.succeeded,
        failed=msg.failed,
        cancelled=msg.cancelled,
    )


def job_snapshot(msg: common_pb2.Job) -> JobSnapshot:
    return JobSnapshot(
        id=msg.job_id,
        kind=msg.kind,
        name=msg.name,
        state=_JOB_STATES.get(msg.state, JobState.UNSPECIFIED),
        counts=job_counts(msg.counts),
        cost_held=msg.cost_held,
        cost_spent=msg.cost_spent,
        error=msg.error,
        created_at=timestamp(msg, "created_at"),
        finished_at=timestamp(msg, "finished_at"),
        owner=msg.owner,
        waiting=msg.waiting,
        priority=msg.priority,
        has_webhook=msg.has_webhook,
        still=msg.still,
        inputs=dict(msg.inputs),
        params=msg.params,
        webhook=webhook_delivery(msg.webhook) if msg.HasField("webhook") else None,
    )


def webhook_delivery(msg: common_pb2.WebhookDelivery) -> WebhookDelivery:
    return WebhookDelivery(
        state=_WEBHOOK_STATES.get(msg.state, WebhookState.UNSPECIFIED),
        attempts=msg.attempts,
        max_attempts=msg.max_attempts,
        last_error=msg.last_error,
        next_attempt_at=timestamp(msg, "next_attempt_at"),
        last_attempt_at=timestamp(msg, "last_attempt_at"),
        delivery_id=msg.delivery_id,
    )


def output_ref(msg: common_pb2.OutputRef) -> OutputRef:
    return OutputRef(name=msg.name, digest=msg.digest, size=msg.size)


def task_result(
    job_id: str,
    msg: client_pb2.TaskResult,
    fetch: Fetch | None = None,
    afetch: AsyncFetch | None = None,
) -> TaskResult:
    receipt = common_pb2.Receipt()
    receipt.CopyFrom(msg.receipt)
    return TaskResult(
        job_id=job_id,
        task_id=msg.task_id,
        index=msg.index,
        state=_TASK_STATES.get(msg.state, TaskState.UNSPECIFIED),
        node_id=msg.node_id,
        outputs=[output_ref(ref) for ref in msg.outputs],
        receipt=receipt if msg.HasField("receipt") and receipt.statement else None,
        error=msg.error,
        inline_outputs=dict(msg.inline_outputs),
        fetch=fetch,
        afetch=afetch,
    )


def info(msg: client_pb2.GetInfoResponse) -> Info:
    kinds = [
        KindInfo(k.name, k.description, k.price_credit, k.price_units, k.work_unit)
        for k in msg.kinds
    ]
    return Info(
        version=msg.version,
        kinds=kinds,
        max_blob_size=msg.max_blob_size,
        coordinator_key=msg.coordinator_public_key,
    )


def account_from_client(msg: client_pb2.GetAccountResponse) -> Account:
    return Account(
        name=msg.name,
        balance=msg.balance,
        is_admin=msg.is_admin,
        stake=msg.stake,
        held=msg.held,
        webhook_secret=msg.webhook_secret,
    )


def estimate(msg: client_pb2.EstimateJobResponse) -> Estimate:
    return Estimate(
        tasks=msg.tasks,
        work_units=msg.work_units,
        work_unit=msg.work_unit,
        price_credit=msg.price_credit,
        price_units=msg.price_units,
        exact_credit=msg.exact_credit,
        credit_per_pass=msg.credit_per_pass,
        max_paid_results=msg.max_paid_results,
        max_held=msg.max_held,
        policy=msg.policy,
        balance=msg.balance,
        rounding=msg.rounding,
        waiting=msg.waiting,
    )


def attempt_log(job_id: str, msg: client_pb2.AttemptLog) -> AttemptLog:
    """An attempt's log, checked against its node's signature (not trusting the
    coordinator's word for what the node wrote)."""
    problem = ""
    try:
        signed = tasklog.verify_log(msg.public_key, msg.log).statement
        named = (signed.job_id, signed.task_id, signed.attempt_id, signed.outcome)
        if named != (job_id, msg.task_id, msg.attempt_id, msg.outcome):
            problem = "the signed statement names another job, task, attempt or outcome"
    except BadSignature as exc:
        problem = str(exc)
    return AttemptLog(
        task_index=msg.task_index,
        task_id=msg.task_id,
        attempt_id=msg.attempt_id,
        node_id=msg.node_id,
        outcome=msg.outcome,
        text=msg.log.text.decode("utf-8", errors="replace"),
        verified=not problem,
        problem=problem,
        received_at=timestamp(msg, "received_at"),
    )


def dispute(msg: common_pb2.Dispute) -> Dispute:
    return Dispute(
        task_index=msg.task_index,
        task_id=msg.task_id,
        state=msg.state,
        evidence=json.loads(msg.evidence_json or "{}"),
        updated_at=timestamp(msg, "updated_at"),
    )


def account(msg: admin_pb2.Account) -> Account:
    return Account(
        name=msg.name,
        balance=msg.balance,
        is_admin=msg.is_admin,
        created_at=timestamp(msg, "created_at"),
        disabled=msg.disabled,
        has_key=msg.has_key,
    )


def invite(msg: admin_pb2.Invite) -> Invite:
    return Invite(
        id=msg.id,
        uses=msg.uses,
        used=msg.used,
        credit=msg.credit,
        note=msg.note,
        created_at=timestamp(msg, "created_at"),
        expires_at=timestamp(msg, "expires_at"),
        revoked=msg.revoked,
    )


def job_states_to_pb(states: Iterable[JobState | str]) -> list["common_pb2.JobState.ValueType"]:
    """A job-state filter for a request; ValueError names an unknown state."""
    by_state = {state: pb for pb, state in _JOB_STATES.items()}
    wanted = []
    for state in states:
        try:
            wanted.append(by_state[JobState(state)])
        except (ValueError, KeyError):
            known = ", ".join(by_state)
            raise ValueError(f"{state!r} is not a job state; one of {known}") from None
    return wanted


def device(msg: common_pb2.Device) -> Device:
    kind = {v: k for k, v in _DEVICE_KINDS.items()}.get(msg.kind, DeviceKind.ANY)
    return Device(
        index=msg.index,
        kind=kind,
        name=msg.name,
        memory_bytes=msg.memory_bytes,
        compute_capability=msg.compute_capability,
        driver_version=msg.driver_version,
        backend=msg.backend,
        uuid=msg.uuid,
    )


def node(msg: admin_pb2.Node) -> Node:
    return Node(
        node_id=msg.node_id,
        name=msg.name,
        devices=[device(d) for d in msg.devices],
        state=_NODE_STATES.get(msg.state, "unknown"),
        tasks_succeeded=msg.tasks_succeeded,
        tasks_failed=msg.tasks_failed,
        credit=msg.credit,
        last_seen=timestamp(msg, "last_seen"),
        software=dict(msg.software),
        owner=msg.owner,
        standing=_STANDINGS.get(msg.standing, "unknown"),
        standing_reason=msg.standing_reason,
        streak=msg.streak,
        validated=msg.validated,
        invalid=msg.invalid,
        strikes=msg.strikes,
        check_rate=msg.check_rate,
        vetted=msg.vetted,
        vetted_reason=msg.vetted_reason,
        window=msg.window,
        in_flight=msg.in_flight,
    )


def node_credit(msg: client_pb2.GetNodeCreditResponse) -> NodeCredit:
    return NodeCredit(
        node_id=msg.node_id,
        owner=msg.owner,
        balance=msg.balance,
        standing=msg.standing,
        standing_reason=msg.standing_reason,
        validated=msg.validated,
        invalid=msg.invalid,
        entries=[
            LedgerEntry(
                transaction_id=e.transaction_id,
                account=f"node:{msg.node_id}",
                amount=e.amount,
                reason=e.reason,
                job_id=e.job_id,
                task_id=e.task_id,
                created_at=timestamp(e, "created_at"),
            )
            for e in msg.entries
        ],
    )


def ledger_check(msg: admin_pb2.CheckLedgerResponse) -> LedgerCheck:
    return LedgerCheck(
        balanced=msg.balanced,
        problems=list(msg.problems),
        transactions=msg.transactions,
        entries=msg.entries,
        total=msg.total,
    )


def ledger_entry(msg: admin_pb2.LedgerEntry) -> LedgerEntry:
    return LedgerEntry(
        transaction_id=msg.transaction_id,
        account=msg.account,
        amount=msg.amount,
        reason=msg.reason,
        job_id=msg.job_id,
        task_id=msg.task_id,
        created_at=timestamp(msg, "created_at"),
    )


def event(msg: admin_pb2.Event) -> Event:
    return Event(
        seq=msg.seq,
        id=msg.id,
        kind=msg.kind,
        message=msg.message,
        at=timestamp(msg, "at"),
        job_id=msg.job_id,
        task_id=msg.task_id,
        node_id=msg.node_id,
        account=msg.account,
        data=json.loads(msg.data_json or "{}"),
    )
