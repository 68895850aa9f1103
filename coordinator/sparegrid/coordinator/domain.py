"""The coordinator's records: plain dataclasses, no gRPC, no SQL."""

import itertools
import os
from dataclasses import dataclass, field
from enum import IntFlag, StrEnum

_ID_PREFIX = os.urandom(8).hex()
_ID_COUNTER = itertools.count()


def new_id() -> str:
    """A unique id, cheap enough for every attempt and ledger transaction: a random
    per-process prefix (64 bits) and a counter."""
    return f"{_ID_PREFIX}{next(_ID_COUNTER):08x}"


class JobState(StrEnum):
    # a large job's tasks are being written: nobody sees it until its cost is held
    SUBMITTING = "submitting"
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class TaskState(StrEnum):
    QUEUED = "queued"
    LEASED = "leased"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class AttemptState(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # the node reported a failure
    EXPIRED = "expired"  # lease ran out or the node went away
    CANCELLED = "cancelled"  # the job was cancelled or another attempt won
    REJECTED = "rejected"  # the node's result did not verify


class Claim(IntFlag):
    """What a failed (or taken back) attempt counted for with the scheduler
    (services/scheduler/leases.py), kept with the attempt so that a coordinator that
    restarts, or a standby that takes over, rebuilds it (QueuesPart.load): each is a
    decision made on what was online then, which cannot be made again from the store."""

    COUNTED = 1  # its owner's failure counted (ActiveJob.failed_by)
    FINAL = 2  # its node called the failure final (ActiveJob.final_claims)
    FAULT = 4  # its owner's first failure for the task's own fault (ActiveJob.faults)
    DOUBTED = 8  # a failure of a node of no vetted owner not counted (ActiveJob.doubted)
    KEPT_OFF = 16  # its owner was kept off the task (ActiveJob.excluded)
    # it ran out of memory on its device: the task needs a larger one (ActiveJob.needs_memory),
    # or, with FINAL, no connected device was larger and the need was forgotten
    OUT_OF_MEMORY = 32


NO_CLAIMS = Claim(0)


@dataclass
class Account:
    id: str
    name: str
    key_hash: str  # SHA-256 hex of the API key; the key itself is never stored
    is_admin: bool
    created_at: float
    # a disabled account's key is refused (its nodes cannot connect either); its jobs run on
    disabled: bool = False

    @property
    def has_key(self) -> bool:
        """False once its key is revoked (until `admin key rotate` gives it a new one)."""
        return not self.key_hash.startswith(REVOKED_KEY)


# key_hash of an account whose key was revoked: no SHA-256 hex digest starts like this
REVOKED_KEY = "revoked:"


@dataclass
class Requirements:
    device_kind: str = ""  # "" any, "cpu", "cuda"
    min_memory_bytes: int = 0
    min_compute_capability: str = ""  # "8.0"
    software: dict[str, str] = field(default_factory=dict)  # name -> "major.minor"


@dataclass
class FileRef:
    """A named blob: an input or an output of a task."""

    name: str
    digest: str
    size: int


@dataclass
class Job:
    id: str
    account_id: str
    kind: str
    name: str
    params: bytes
    inputs: dict[str, str]
    requirements: Requirements
    max_attempts: int
    # what a task costs: price_credit credit per price_units work units (rounded up)
    price_credit: int
    price_units: int
    task_count: int
    state: JobState = JobState.QUEUED
    cost_held: int = 0
    cost_spent: int = 0
    error: str = ""
    created_at: float = 0.0
    finished_at: float | None = None
    idempotency_key: str = ""
    # verification policy: replicas=0 means the adaptive default; else `quorum` of
    # `replicas` results from nodes of different owners must agree
    replicas: int = 0
    quorum: int = 0
    # its tasks that succeeded and failed, recorded when it ends (the rest were cancelled),
    # so a finished job's counts need no count over its tasks; -1 until then
    tasks_succeeded: int = -1
    tasks_failed: int = -1
    # order among its account's own jobs (higher first), and the URL called when it ends
    priority: int = 0
    webhook_url: str = ""
    keep_logs: bool = False  # keep the logs of tasks that succeed too (failures' always)

    def task_cost(self, work: int) -> int:
        """Credit one validated result of a task of `work` units earns (and costs)."""
        return max(1, -(-work * self.price_credit // self.price_units))

    @property
    def max_paid_results(self) -> int:
        """Agreeing results paid per task at most: what the escrow must cover. Adaptive:
        a result and its check, or an anonymous node's result and two vetted checks."""
        return self.replicas if self.replicas else 3


@dataclass
class Task:
    id: str
    job_id: str
    index: int
    params: bytes
    inputs: list[FileRef]
    state: TaskState = TaskState.QUEUED
    attempts: int = 0  # attempts started so far
    node_id: str = ""  # node whose result was accepted
    outputs: list[FileRef] = field(default_factory=list)
    receipt: bytes = b""  # serialised sparegrid.v1.Receipt of the accepted result
    error: str = ""
    work: int = 1  # credit units, from the job kind's plan


@dataclass
class Attempt:
    id: str
    task_id: str
    job_id: str
    node_id: str
    device_index: int
    deadline: float
    state: AttemptState = AttemptState.RUNNING
    created_at: float = 0.0
    finished_at: float | None = None
    error_code: str = ""
    error: str = ""
    # what the node was asked to run when not the task's params: a spot check's crop
    params: bytes = b""
    claims: Claim = NO_CLAIMS  # what its failure counted for (Claim)


@dataclass
class Device:
    index: int
    kind: str  # "cpu" or "cuda"
    name: str
    uuid: str = ""
    memory_bytes: int = 0
    compute_capability: str = ""
    driver_version: str = ""
    backend: str = ""


@dataclass
class Node:
    id: str
    public_key: bytes
    name: str
    devices: list[Device] = field(default_factory=list)
    software: dict[str, str] = field(default_factory=dict)
    executors: dict[str, str] = field(default_factory=dict)  # kind -> executor version
    first_seen: float = 0.0
    last_seen: float = 0.0
    tasks_succeeded: int = 0
    tasks_failed: int = 0
    # who runs the node: an account name proven at connect, or "node:<id>" when none
    owner: str = ""


def owner_of(node: Node) -> str:
    """Who answers for a node: its proven owner account, else the node alone."""
    return node.owner or f"node:{node.id}"


def printable(text: str) -> str:
    """`text` with every character that could drive a terminal (ESC, CR, BEL, bidi
    overrides) as "?", and line breaks and tabs as spaces (a traceback's lines stay
    readable on one line): for what a node or a webhook's receiver chose, which a
    client's or an operator's terminal shows (rich passes ESC through)."""
    return "".join(c if c.isprintable() else " " if c in "\n\t" else "?" for c in text)


class Standing(StrEnum):
    ACTIVE = "active"
    QUARANTINED = "quarantined"  # too many invalid results: no work until reinstated
    BANNED = "banned"  # by the operator
    PENDING = "pending"  # new, under `--enrollment approve`: no work until approved


@dataclass
class Reputation:
    """What the coordinator has learnt about a node's results."""

    node_id: str
    streak: int = 0  # consecutive results validated by comparison
    validated: int = 0
    invalid: int = 0
    strikes: int = 0  # invalid results not yet forgiven; quarantine at the limit
    standing: Standing = Standing.ACTIVE
    reason: str = ""
    updated_at: float = 0.0


class ReplicaState(StrEnum):
    PENDING = "pending"  # waiting for results to compare it with
    VALID = "valid"
    INVALID = "invalid"


@dataclass
class Replica:
    """One node's result for a task, kept until the task's verification decides."""

    attempt_id: str
    task_id: str
    job_id: str
    node_id: str
    owner: str
    outputs: list[FileRef]
    receipt: bytes  # the worker's receipt, without countersignature
    state: ReplicaState = ReplicaState.PENDING
    created_at: float = 0.0
    params: bytes = b""  # its attempt's params when not the task's: a spot check's crop

    @property
    def known_answer(self) -> bool:
        """A known answer the coordinator stored for a canary (canaries.py), not a result
        some node returned: no node stands behind it."""
        return not self.node_id


class DisputeState(StrEnum):
    OPEN = "open"  # results disagree; the task waits for a node of another owner
    SETTLED = "settled"  # owners agreed on one answer; the others were outvoted
    FAILED = "failed"  # no answer won within the attempt limit


@dataclass
class Dispute:
    """Results of one task that disagree, with the evidence: what each node returned and
    what each comparison measured. One per task, updated as results come in."""

    task_id: str
    job_id: str
    task_index: int
    state: DisputeState
    # {"results": [{node, owner, attempt, outputs, crop}], "comparisons": [{a, b, agree,
    # rule, metrics}], "decision": "..."}: JSON-able, shown as it is
    evidence: dict[str, object]
    created_at: float = 0.0
    updated_at: float = 0.0


@dataclass
class Posting:
    account: str
    amount: int


@dataclass
class Transaction:
    """A balanced set of postings: the amounts sum to zero."""

    id: str
    idempotency_key: str
    reason: str
    postings: list[Posting]
    job_id: str = ""
    task_id: str = ""
    created_at: float = 0.0


@dataclass
class LedgerEntry:
    transaction_id: str
    account: str
    amount: int
    reason: str
    job_id: str
    task_id: str
    created_at: float


# The most a store's BIGINT column holds (credit, work units, event numbers): PostgreSQL
# refuses more, failing the whole group commit that wrote it; SQLite turns it into a float
# or refuses it.
MAX_BIGINT = (1 << 63) - 1

# Ledger account names. Only MINT may go below zero: it is where granted credit comes from.
MINT = "mint"
# The most a balance may hold either way (the mint's below zero: all the credit issued).
MAX_BALANCE = MAX_BIGINT


def client_account(account_name: str) -> str:
    return f"client:{account_name}"


def node_account(node_id: str) -> str:
    return f"node:{node_id}"


def escrow_account(job_id: str) -> str:
    return f"escrow:{job_id}"


def stake_account(owner: str) -> str:
    """Credit an owner locked as a bond for its nodes: proven fraud is slashed from it."""
    return f"stake:{owner}"


@dataclass
class Event:
    """Something an operator wants to know happened (services/events.py names the kinds),
    kept for `sparegrid admin events` and the dashboard. `seq` orders events and is given
    by the store; `id` names one in logs."""

    id: str
    at: float
    kind: str
    message: str
    job_id: str = ""
    task_id: str = ""
    node_id: str = ""
    account: str = ""
    data: dict[str, object] = field(default_factory=dict)  # JSON-able details
    seq: int = 0


@dataclass
class AttemptLog:
    """The log a node sent with an attempt's outcome (services/results.py): the text and
    the statement exactly as the node signed them, and its key, for the owner to check."""

    attempt_id: str
    job_id: str
    task_id: str
    task_index: int
    node_id: str
    outcome: str  # "succeeded" or the failure code
    statement: bytes
    signature: bytes
    text: bytes
    public_key: bytes
    received_at: float


@dataclass
class Delivery:
    """A webhook call owed for a job that ended (services/webhooks.py)."""

    id: str
    job_id: str
    account_id: str
    url: str
    body: bytes
    attempts: int = 0
    next_at: float = 0.0
    state: str = "pending"  # pending, delivered, failed
    last_error: str = ""
    created_at: float = 0.0
    tried_at: float = 0.0  # when the last call was made; 0 before the first


@dataclass
class Invite:
    """An invitation code an operator issued: it lets `uses` people sign up, each granted
    `credit`, until it expires or is revoked (services/invites.py). Only the SHA-256 of
    the code is kept; `id` names the invitation in lists and revokes."""

    id: str
    code_hash: str
    uses: int
    credit: int
    note: str
    created_at: float
    expires_at: float = 0.0  # 0: never
    used: int = 0
    revoked: bool = False
