"""Plain data the SDK hands out: jobs, task results, accounts, nodes, ledger figures.

Nothing here talks to the network; `convert` builds these from protobuf messages.
"""

import enum
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any


class JobState(enum.StrEnum):
    UNSPECIFIED = "unspecified"
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


class TaskState(enum.StrEnum):
    UNSPECIFIED = "unspecified"
    QUEUED = "queued"
    LEASED = "leased"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class WebhookState(enum.StrEnum):
    UNSPECIFIED = "unspecified"
    PENDING = "pending"  # not answered with a 2xx yet: tried again at next_attempt_at
    DELIVERED = "delivered"
    FAILED = "failed"  # every attempt failed: the coordinator gave up


class DeviceKind(enum.StrEnum):
    ANY = "any"
    CPU = "cpu"
    CUDA = "cuda"


@dataclass(frozen=True)
class JobCounts:
    total: int = 0
    queued: int = 0
    leased: int = 0
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0

    @property
    def done(self) -> int:
        """Tasks in a final state."""
        return self.succeeded + self.failed + self.cancelled


@dataclass(frozen=True)
class WebhookDelivery:
    """The call of a job's webhook once the job ended, as the coordinator last reported
    it to the job's owner (`client.get_job`, `job.refresh()`)."""

    state: WebhookState
    attempts: int  # calls made so far
    max_attempts: int  # calls made at most before the coordinator gives up
    last_error: str = ""  # why the last call failed, e.g. "HTTP 503"; "" once delivered
    next_attempt_at: datetime | None = None  # while pending
    last_attempt_at: datetime | None = None  # once delivered: when it was
    delivery_id: str = ""  # the X-Sparegrid-Delivery header of every call


@dataclass(frozen=True)
class JobSnapshot:
    """A job as the coordinator last reported it."""

    id: str
    kind: str
    name: str
    state: JobState
    counts: JobCounts
    cost_held: int
    cost_spent: int
    error: str = ""
    created_at: datetime | None = None
    finished_at: datetime | None = None
    owner: str = ""
    # why queued tasks cannot run on the nodes connected now; "" when they can
    waiting: str = ""
    priority: int = 0  # order among the account's own jobs
    has_webhook: bool = False
    # its webhook's call, from get_job, cancel and retry_job; None when it has no webhook,
    # has not ended yet, or came from a list or a watch
    webhook: WebhookDelivery | None = None
    # a render job tiling one still: the file its results stitch into ("still.png"); ""
    # for any other job. Such a job has no frame to preview, before or after it is done
    still: str = ""
    # what it was submitted with (input name -> digest, the params JSON), from get_job
    # only; empty from a list, a watch, submit or cancel
    inputs: dict[str, str] = field(default_factory=dict, hash=False)
    params: bytes = b""

    @property
    def finished(self) -> bool:
        return self.state.final

    def eta(self, now: datetime | None = None) -> float | None:
        """Seconds left, from the pace of the tasks done since it was submitted; None
        before any is done or once it is final."""
        done, total = self.counts.done, self.counts.total
        if self.finished or not done or self.created_at is None or done >= total:
            return None
        elapsed = ((now or datetime.now(UTC)) - self.created_at).total_seconds()
        return max(elapsed, 0.0) * (total - done) / done

    @property
    def cost_refunded(self) -> int:
        """Escrowed credit returned to the account: what was held and not spent, once final."""
        return max(self.cost_held - self.cost_spent, 0) if self.finished else 0


@dataclass(frozen=True)
class Requirements:
    """What each task of a job needs from the node and device it runs on."""

    device_kind: DeviceKind = DeviceKind.ANY
    min_memory_bytes: int = 0
    min_compute_capability: str = ""
    software: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class OutputRef:
    name: str
    digest: str
    size: int


@dataclass(frozen=True)
class KindInfo:
    """A job kind; a task costs `price_credit` per `price_units` work units (rounded up,
    at least 1) for each validated result."""

    name: str
    description: str
    price_credit: int
    price_units: int
    work_unit: str = "unit"


@dataclass(frozen=True)
class Info:
    version: str
    kinds: list[KindInfo]
    max_blob_size: int
    coordinator_key: bytes = b""  # Ed25519 public key that countersigns accepted results


@dataclass(frozen=True)
class Account:
    name: str
    balance: int
    is_admin: bool
    created_at: datetime | None = None
    stake: int = 0  # credit locked as the account's stake (a bond for its nodes)
    held: int = 0  # credit held in escrow for its running jobs
    disabled: bool = False  # by an operator: its key is refused
    has_key: bool = True  # False once an operator revoked its key
    # hex key of the HMAC-SHA256 signature on this account's webhook calls
    webhook_secret: str = ""


@dataclass(frozen=True)
class Invite:
    """An invitation code's record (the code itself is shown only when it is created)."""

    id: str  # names it in `admin invite list` and `revoke`
    uses: int  # signups it allows in all
    used: int
    credit: int  # granted to each account it creates
    note: str = ""
    created_at: datetime | None = None
    expires_at: datetime | None = None  # None: never
    revoked: bool = False
    # what the coordinator warned of when it was made (`create_invite` only): its credit
    # pays the stake a vote costs, so each signup can vote as a paying owner
    warning: str = ""

    @property
    def left(self) -> int:
        return max(self.uses - self.used, 0)


@dataclass(frozen=True)
class Estimate:
    """What a job would cost, split and priced by the coordinator as a submit would be;
    nothing was stored or held."""

    tasks: int
    work_units: int
    work_unit: str
    price_credit: int  # per price_units work units
    price_units: int
    exact_credit: float  # the work at the price, unrounded, one pass
    credit_per_pass: int  # one validated result of every task, as charged
    max_paid_results: int  # results paid per task at most (replicas, checks)
    max_held: int  # held in escrow at submit; unused credit comes back at the end
    policy: str
    balance: int
    rounding: str = ""  # what whole-credit rounding does to this job; "" when nothing
    # why no node connected now could run it (as Job.waiting says); "" when one can
    waiting: str = ""

    @property
    def affordable(self) -> bool:
        return self.max_held <= self.balance


@dataclass(frozen=True)
class AttemptLog:
    """What an attempt's executor wrote (the last 64 KiB, the node's paths replaced by
    placeholders such as <scratch>), as its node returned it. `verified`: the node's
    signature over the text holds and names this job, task and attempt; `problem` says
    why not. `text` is the node's bytes, decoded: print it through `printable`."""

    task_index: int
    task_id: str
    attempt_id: str
    node_id: str
    outcome: str  # "succeeded" or the failure code, e.g. EXECUTOR_ERROR
    text: str
    verified: bool
    problem: str = ""
    received_at: datetime | None = None


@dataclass(frozen=True)
class Dispute:
    """Results of one task that disagreed, and what the coordinator measured: `evidence`
    holds each result (node, owner, outputs, crop) and each comparison (agreement and
    metrics), and the decision."""

    task_index: int
    task_id: str
    state: str  # open, settled or failed
    evidence: dict[str, Any]
    updated_at: datetime | None = None


@dataclass(frozen=True)
class NodeCredit:
    """A node's credit and every entry that explains it, as its owner sees it."""

    node_id: str
    owner: str
    balance: int
    standing: str
    standing_reason: str
    validated: int
    invalid: int
    entries: "list[LedgerEntry]"


@dataclass(frozen=True)
class Device:
    index: int
    kind: DeviceKind
    name: str
    memory_bytes: int = 0
    compute_capability: str = ""
    driver_version: str = ""
    backend: str = ""
    uuid: str = ""


@dataclass(frozen=True)
class Node:
    node_id: str
    name: str
    devices: list[Device]
    state: str
    tasks_succeeded: int
    tasks_failed: int
    credit: int
    last_seen: datetime | None = None
    software: dict[str, str] = field(default_factory=dict)
    owner: str = ""  # account name, or "node:<id>" for a node that declared none
    standing: str = "active"  # active, quarantined, banned or pending (approval)
    standing_reason: str = ""
    streak: int = 0  # consecutive results confirmed by another owner's node
    validated: int = 0
    invalid: int = 0
    strikes: int = 0
    check_rate: float = 1.0  # share of its results the adaptive policy cross-checks
    vetted: bool = True  # its results count as votes and checks
    vetted_reason: str = ""  # why not: no owner account, or too little stake
    window: int = 0  # tasks it may hold at once (grows with its results)
    in_flight: int = 0  # tasks it holds now


@dataclass(frozen=True)
class LedgerCheck:
    balanced: bool
    problems: list[str]
    transactions: int
    entries: int
    total: int


@dataclass(frozen=True)
class LedgerEntry:
    transaction_id: str
    account: str
    amount: int
    reason: str
    job_id: str = ""
    task_id: str = ""
    created_at: datetime | None = None


@dataclass(frozen=True)
class VerificationFailure:
    index: int
    task_id: str
    reason: str


@dataclass(frozen=True)
class VerifyReport:
    """Outcome of checking every receipt of a job; failures are listed, never raised."""

    ok: int
    failures: list[VerificationFailure]
    skipped: int = 0  # tasks that did not succeed, so carry no receipt

    @property
    def passed(self) -> bool:
        return not self.failures


@dataclass(frozen=True)
class Event:
    """Something the coordinator recorded for its operator (`sparegrid admin events`)."""

    seq: int
    id: str
    kind: str
    message: str
    at: datetime | None = None
    job_id: str = ""
    task_id: str = ""
    node_id: str = ""
    account: str = ""
    data: dict[str, Any] = field(default_factory=dict)
