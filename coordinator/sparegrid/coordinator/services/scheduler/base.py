"""What the scheduler keeps in memory: its configuration, the active jobs, the connected
sessions and their leases, and the state every part of the scheduler shares."""

import itertools
import logging
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from sparegrid.coordinator.clock import Clock
from sparegrid.coordinator.domain import (
    Attempt,
    Device,
    Job,
    Node,
    Replica,
    Task,
    TaskState,
)
from sparegrid.coordinator.services.events import Events
from sparegrid.coordinator.services.identity import is_anonymous
from sparegrid.coordinator.services.ledger import Ledger
from sparegrid.coordinator.services.taskqueue import TaskQueue
from sparegrid.coordinator.store.base import Store
from sparegrid.wire.codes import FailureCode

OUT_OF_MEMORY = FailureCode.OUT_OF_MEMORY  # a worker's executor ran out of device memory
NODE_LOST = "NODE_LOST"  # the attempt was lost with its node: given back, not a failure
# Failures that are the task's own, not its node's: it ran past the node's time limit, its
# executor raised on it, its input or params are bad. A task that fails for good with such
# failures from nodes of two vetted owners is charged to its client, and those nodes paid
# (LeasesPart._charge). Never its node's: out of memory, preempted, lost, its executor
# process died (a host's memory, a driver: not told apart from the task), a lease run out;
# nor a TIMEOUT on a node that lets a task run less than the coordinator allows.
TIMEOUT = FailureCode.TIMEOUT
TASK_FAULTS = frozenset(
    {
        FailureCode.TIMEOUT,
        FailureCode.EXECUTOR_ERROR,
        FailureCode.BAD_INPUT,
        FailureCode.BAD_PARAMS,
    }
)

log = logging.getLogger("sparegrid.coordinator.scheduler")


class SessionSink(Protocol):
    """The way down to one connected worker."""

    def assign(self, items: list[tuple[Attempt, Task, str]]) -> None: ...

    def cancel(self, attempt_ids: list[str], reason: str) -> None: ...

    def credited(self, total: int) -> None:
        """The node was paid: `total` is its credit in the ledger now."""

    def close(self) -> None:
        """Ends the session (a newer one of the same node took over)."""


@dataclass
class SchedulerConfig:
    lease_seconds: float = 30.0
    # how long a disconnected node's leases are kept for it to reconnect and resume
    reconnect_grace_seconds: float = 10.0
    # failed or expired attempts after which a node gets no more tasks of that job
    max_node_failures_per_job: int = 2
    # Tasks a node may hold at once, whatever credit it grants: a new node starts with
    # `initial_window`, which grows by one per result it returns and halves when a lease
    # runs out (slow start); a strike sets it back to the start. A node without an owner
    # account starts at 1.
    initial_window: int = 4
    max_window: int = 4096
    # the longest an attempt may run: heartbeats renew its lease up to this age (a
    # worker's declared per-task budget when smaller), plus a margin for transfers
    max_attempt_seconds: float = 3600.0
    # A straggler: an attempt running `straggler_factor` times longer than 9 in 10 of the
    # job's tasks took on that kind of device (once `straggler_samples` are known, and
    # never under `straggler_floor_seconds`) loses its lease, so that a node holding tasks
    # it never runs (or a broken one) does not keep a job waiting for the maximum age.
    straggler_factor: float = 20.0
    straggler_floor_seconds: float = 60.0
    straggler_samples: int = 10
    # a node new to a job may first download its inputs: the floor grows by their size
    # at this rate (a home link)
    straggler_download_rate: float = 5e6
    # a job ending with more queued tasks than this has them marked cancelled in the store
    # a range at a time afterwards (`sweep`), not in the transaction that ends it
    sweep_above: int = 2000
    # tasks of one account running at once at most, over all its jobs (0: no cap), so one
    # account cannot take the whole network
    max_running_per_account: int = 0
    # A node that preempts an attempt (its own policy stopped it: PREEMPTED) is given no
    # new task for this long. Nothing counts against it, and its policy has stopped
    # leasing anyway; but a node that hands back every task at once could otherwise take
    # them straight back from the front of the queue, and hoard a job's tasks for ever.
    preempt_pause_seconds: float = 30.0
    # An owner whose stored quota could not keep a result of its node (QUOTA_EXCEEDED) is
    # given no task on any of its nodes for this long, then tried again: a sweep frees
    # room as the retention passes, or the operator raises the quota.
    full_owner_pause_seconds: float = 60.0


@dataclass
class ActiveJob:
    job: Job
    owner: str  # account name, for the refund
    queue: TaskQueue
    running: dict[str, Attempt]  # task id -> its running attempt
    open_tasks: int  # tasks not in a final state
    node_failures: Counter[str] = field(default_factory=Counter)
    succeeded: int = 0
    failed: int = 0
    # verification: results held for comparison, owners a task must not go to again, and
    # results received per task (they do not count against the attempt limit)
    replicas: dict[str, list[Replica]] = field(default_factory=dict)
    excluded: dict[str, set[str]] = field(default_factory=dict)
    results: Counter[str] = field(default_factory=Counter)
    # tasks that ran out of device memory: the least memory a device needs to take them;
    # written with the attempt too (Claim.OUT_OF_MEMORY) and rebuilt at load, from the
    # memory the failing node's stored device has
    needs_memory: dict[str, int] = field(default_factory=dict)
    # tasks whose result waits for a later check of its node to vouch for it (vouching.py):
    # queued in the store, out of the queue here
    held: dict[str, Task] = field(default_factory=dict)
    # how long its accepted results took, by device kind (the latest 100): what a
    # straggler is
    durations: dict[str, deque[float]] = field(default_factory=dict)
    # how long results not yet accepted took, by attempt id: (device kind, seconds)
    timings: dict[str, tuple[str, float]] = field(default_factory=dict)
    straggled: set[str] = field(default_factory=set)  # tasks taken back from a straggler
    # What a failure counted for below (doubted, final_claims, failed_by, faults, and the
    # owners `excluded` keeps off a task for failing or handing it back) is also written
    # with its attempt (domain.Claim), and rebuilt when a restart loads the job
    # (QueuesPart._load_claims); `excluded` for held results is rebuilt from the replicas.
    # tasks a node of no vetted owner failed while a vetted one could run them: its failure
    # was not counted, and they go to nodes of vetted owners only (LeasesPart._doubt)
    doubted: set[str] = field(default_factory=set)
    # owners whose nodes called a task's failure final: two end it (_second_opinion)
    final_claims: dict[str, set[str]] = field(default_factory=dict)
    # owners whose nodes' failures of a task counted: its attempts running out ends it only
    # once there are two (_spent_by_one)
    failed_by: dict[str, set[str]] = field(default_factory=dict)
    # per task, the first attempt of each vetted owner that failed it for the task's own
    # fault (TASK_FAULTS): paid once two owners agree and the task fails for good
    faults: dict[str, dict[str, Attempt]] = field(default_factory=dict)
    returned: Counter[str] = field(default_factory=Counter)  # results per node, this job
    # the node and device that last made others_online true: tried first next time, so
    # the question asked for each result costs one look, not a walk over every session
    online_hint: tuple[str, int] | None = None
    # attempts per task lost with their node (it restarted without them, or went away and
    # did not come back): given back, up to the job's attempt limit (Scheduler.lose)
    lost: Counter[str] = field(default_factory=Counter)
    # the version of its queue the last dispatch pass saw (taskqueue.py): a newer one means
    # tasks joined it, and nodes waiting with credit for such tasks get another look
    seen_version: int = 0

    def counts(self) -> dict[TaskState, int]:
        """Tasks per state, from memory: no query while the job runs."""
        return {
            TaskState.QUEUED: len(self.queue) + len(self.held),
            TaskState.LEASED: len(self.running),
            TaskState.SUCCEEDED: self.succeeded,
            TaskState.FAILED: self.failed,
            TaskState.CANCELLED: 0,
        }


@dataclass
class Sweep:
    """A finished job whose queued tasks are still QUEUED in the store: they are marked
    cancelled a range of indexes at a time, and the queue they were in is freed as much."""

    job_id: str
    stop: int  # the job's task count
    left: TaskQueue  # what the job's queue held, dropped a slice per step
    start: int = 0


@dataclass
class Lease:
    attempt: Attempt
    task: Task  # as leased; its result is checked against this without a query
    digests: list[str]  # the task's inputs: what the node may download for it


@dataclass
class NodeSession:
    node: Node
    sink: SessionSink
    credit: dict[int, int] = field(default_factory=dict)  # device index -> assignments owed
    leases: dict[str, Lease] = field(default_factory=dict)  # by attempt id
    digests: Counter[str] = field(default_factory=Counter)  # inputs it may download
    draining: bool = False
    paused: set[int] = field(default_factory=set)  # devices its volunteer's policy paused
    granted: set[int] = field(default_factory=set)  # devices it has granted credit for
    max_age: float = 0.0  # seconds an attempt of this node may run, renewals included
    # the capability classes (executor, device kind) it waits in with credit (dispatch.py)
    classes: set[tuple[str, str]] = field(default_factory=set)
    seq: int = 0  # connect order: the order dispatch serves sessions in

    def device(self, index: int) -> Device | None:
        return next((d for d in self.node.devices if d.index == index), None)

    def taking_work(self, index: int) -> bool:
        """Whether a device takes work: its node granted credit for it in this session,
        and has not paused it since."""
        return index in self.granted and index not in self.paused


class SchedulerBase:
    """The scheduler's state; the parts in this package add the methods."""

    events: Events | None = None  # job ends and task failures
    # tasks leased by dispatch passes, and leases taken back (expired, stragglers): counts
    # the metrics read
    leased_total = 0
    expired_total = 0

    def __init__(
        self,
        store: Store,
        ledger: Ledger,
        clock: Clock,
        config: SchedulerConfig,
        on_change: Callable[[Iterable[str]], None] = lambda jobs: None,
        blocked: Callable[[str], bool] = lambda node_id: False,
        check_params: Callable[[Job, Task, list[Replica]], bytes] = lambda job, task, held: b"",
        vetted: Callable[[str], bool] = lambda owner: not is_anonymous(owner),
        proven: Callable[[str], int] = lambda node_id: 0,
        ended: Callable[[Job], None] = lambda job: None,
    ) -> None:
        self.store = store
        self.blocked = blocked  # a node that may get no work (quarantined or banned)
        # whether an owner's results count as votes (identity.py): only such nodes run a
        # quorum job's replicas or the check of a held result
        self.vetted = vetted
        self.proven = proven  # results of a node accepted so far (its reputation)
        # what an attempt at a task with results held for a check runs (spotcheck.py)
        self.check_params = check_params
        self.ledger = ledger
        self.clock = clock
        self.config = config
        self.on_change = on_change
        self.ended = ended  # called in the transaction that ends a job (webhooks)
        self.jobs: dict[str, ActiveJob] = {}
        self._order: list[ActiveJob] | None = None  # dispatch order; None: to compute
        self.sessions: dict[str, NodeSession] = {}
        self.windows: dict[str, float] = {}  # node id -> tasks it may hold at once
        self.preempt_paused: dict[str, float] = {}  # node id -> when it may take tasks again
        self.full_owners: dict[str, float] = {}  # owner (owner_of) -> when it is tried again
        self.sweeps: dict[str, Sweep] = {}  # by job id
        # A dispatch pass looks only at sessions that may have something new (dispatch.py):
        # those whose credit or room grew (`due`, node ids in the order they became due),
        # and those waiting with credit in a capability class one of whose queues grew
        # (`waiting`: executor -> device kind -> node ids). An idle fleet costs nothing.
        self.due: dict[str, None] = {}
        self.waiting_by_class: dict[str, dict[str, dict[str, None]]] = {}
        self.rescan_wanted = False
        self.scanned = 0  # sessions examined by dispatch passes, in all (a metric)
        self.connects = itertools.count(1)

    def full_age(self, seconds: float = 0.0) -> float:
        """How long an attempt may run, renewals included, on a node that lets a task run
        `seconds` (by default as long as the coordinator allows: --max-attempt-seconds):
        that, plus a quarter and a lease for transfers."""
        return (seconds or self.config.max_attempt_seconds) * 1.25 + self.config.lease_seconds

    def lose(self, attempts: list[Attempt], reason: str) -> None:
        """Attempts lost with their node (leases.py)."""
        raise NotImplementedError
