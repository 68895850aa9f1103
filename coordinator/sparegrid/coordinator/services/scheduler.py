"""Matches queued tasks to connected workers, leases them, and takes leases back.

The store is the source of truth; the scheduler keeps the active jobs' queues and the
connected sessions in memory so a dispatch pass is one store transaction for many tasks.
Sessions are reached through `SessionSink`, so this module never touches gRPC.
"""

import logging
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from sparegrid.coordinator.clock import Clock
from sparegrid.coordinator.domain import (
    Attempt,
    AttemptState,
    Device,
    Job,
    JobState,
    Node,
    Replica,
    ReplicaState,
    Task,
    TaskState,
    new_id,
    owner_of,
)
from sparegrid.coordinator.services.identity import is_anonymous
from sparegrid.coordinator.services.ledger import Ledger
from sparegrid.coordinator.services.taskqueue import Reader, TaskQueue
from sparegrid.coordinator.states import FINAL_JOB_STATES, move_attempt, move_job, move_task
from sparegrid.coordinator.store.base import Store

OUT_OF_MEMORY = "CUDA_OOM"  # a worker's executor ran out of device memory
NODE_LOST = "NODE_LOST"  # the attempt was lost with its node: given back, not a failure

log = logging.getLogger("sparegrid.coordinator.scheduler")


class SessionSink(Protocol):
    """The way down to one connected worker."""

    def assign(self, items: list[tuple[Attempt, Task, str]]) -> None: ...

    def cancel(self, attempt_ids: list[str], reason: str) -> None: ...

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
    # tasks that ran out of device memory: the least memory a device needs to take them
    needs_memory: dict[str, int] = field(default_factory=dict)
    # tasks whose result waits for a later check of its node to vouch for it (vouching.py):
    # queued in the store, out of the queue here
    held: dict[str, Task] = field(default_factory=dict)
    # how long its attempts took, by device kind (the latest 100): what a straggler is
    durations: dict[str, deque[float]] = field(default_factory=dict)
    straggled: set[str] = field(default_factory=set)  # tasks taken back from a straggler
    returned: Counter[str] = field(default_factory=Counter)  # results per node, this job
    # attempts per task lost with their node (it restarted without them, or went away and
    # did not come back): given back, up to the job's attempt limit (Scheduler.lose)
    lost: Counter[str] = field(default_factory=Counter)

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

    def device(self, index: int) -> Device | None:
        return next((d for d in self.node.devices if d.index == index), None)

    def taking_work(self, index: int) -> bool:
        """Whether a device takes work: its node granted credit for it in this session,
        and has not paused it since."""
        return index in self.granted and index not in self.paused


def version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".") if part.isdigit())


def misfit(job: Job, node: Node, device: Device) -> tuple[int, str]:
    """The first of a job's requirements a device of a node does not meet, as (how many it
    met before that one, what the job needs); (met, "") when the device fits."""
    req = job.requirements
    if job.kind not in node.executors:
        return 0, f"a node with the {job.kind} executor"
    if req.device_kind and device.kind != req.device_kind:
        return 1, f"a {req.device_kind} device"
    if req.device_kind == "cpu" and device.memory_bytes < req.min_memory_bytes:
        # a job kept on CPUs (a language model decoded there) counts their memory
        return 2, f"a CPU with {_memory(req.min_memory_bytes)} of memory or more"
    if (
        req.min_memory_bytes
        and req.device_kind != "cpu"
        and (device.kind == "cpu" or device.memory_bytes < req.min_memory_bytes)
    ):
        # a memory requirement is device memory: a CPU's RAM is no GPU's memory
        return 2, f"a GPU with {_memory(req.min_memory_bytes)} of memory or more"
    if req.min_compute_capability and (
        device.kind != "cuda"
        or version_tuple(device.compute_capability) < version_tuple(req.min_compute_capability)
    ):
        return 3, f"a cuda device of compute capability {req.min_compute_capability} or newer"
    for met, (name, wanted) in enumerate(req.software.items(), start=4):
        if version_tuple(node.software.get(name, ""))[:2] != version_tuple(wanted)[:2]:
            return met, f"{name} {wanted}"
    return 4 + len(req.software), ""


def _memory(size: int) -> str:
    return f"{size / (1 << 30):.1f} GiB" if size >= 1 << 28 else f"{size / (1 << 20):.0f} MiB"


def fits(job: Job, node: Node, device: Device) -> bool:
    """Whether a device of a node meets a job's requirements."""
    return not misfit(job, node, device)[1]


class Scheduler:
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
        self.jobs: dict[str, ActiveJob] = {}
        self.sessions: dict[str, NodeSession] = {}
        self.windows: dict[str, float] = {}  # node id -> tasks it may hold at once
        self.sweeps: dict[str, Sweep] = {}  # by job id

    # --- jobs ---------------------------------------------------------------

    def load(self) -> None:
        """Rebuilds the queues from the store after a start or restart."""
        owners = {a.id: a.name for a in self.store.list_accounts()}
        active = self.store.list_jobs(states=[JobState.QUEUED, JobState.RUNNING], limit=10**9)
        for job in reversed(active):  # oldest first
            counts = self.store.task_counts(job.id)
            open_tasks = counts[TaskState.QUEUED] + counts[TaskState.LEASED]
            self.jobs[job.id] = ActiveJob(
                job,
                owners[job.account_id],
                TaskQueue(),
                {},
                open_tasks,
                succeeded=counts[TaskState.SUCCEEDED],
                failed=counts[TaskState.FAILED],
            )
        queued: dict[str, list[Task]] = {}
        for task in self.store.queued_tasks():
            queued.setdefault(task.job_id, []).append(task)
        for job_id, tasks in queued.items():
            if job_id in self.jobs:
                self.jobs[job_id].queue = TaskQueue(tasks)
                continue
            ended = self.store.get_job(job_id)  # it ended before they were all swept
            if ended is not None and ended.state in FINAL_JOB_STATES:
                self.sweeps[job_id] = Sweep(job_id, ended.task_count, TaskQueue())
        del queued
        # leases survive a restart: give their nodes time to reconnect and resume them
        grace = self.clock.now() + self.config.reconnect_grace_seconds
        running = self.store.running_attempts()
        for attempt in running:
            attempt.deadline = max(attempt.deadline, grace)
            if attempt.job_id in self.jobs:
                self.jobs[attempt.job_id].running[attempt.task_id] = attempt
        self.store.update_attempts(running)
        for job_id, loaded in self.jobs.items():
            loaded.node_failures.update(self.store.node_failures(job_id))
        open_ids = [t.id for a in self.jobs.values() for t in a.queue.materialised()]
        open_ids += [a.task_id for a in running if a.job_id in self.jobs]
        for replica in self.store.get_replicas(open_ids):
            self.hold_replica(self.jobs[replica.job_id], replica)
        for active_job in list(self.jobs.values()):
            active_job.queue = self._compact(active_job)
            if active_job.open_tasks == 0:
                self.finish(active_job)

    def _compact(self, active: ActiveJob) -> TaskQueue:
        """A large job's queue as ranges of task indexes, read back from the store when
        taken; tasks with results held for comparison stay objects."""
        queue = active.queue
        if len(queue) <= self.config.sweep_above:
            return queue
        tasks = list(queue.materialised())
        kept = active.excluded.keys() | active.needs_memory.keys()
        runs: list[range] = []
        for index in sorted(t.index for t in tasks if t.id not in kept):
            if runs and runs[-1].stop == index:
                runs[-1] = range(runs[-1].start, index + 1)
            else:
                runs.append(range(index, index + 1))
        return TaskQueue([t for t in tasks if t.id in kept], runs, self._reader(active.job.id))

    def _reader(self, job_id: str) -> Reader:
        """Reads a job's queued tasks from `start` on, `count` task indexes of them."""

        def read(start: int, count: int) -> list[Task]:
            tasks = self.store.list_tasks(job_id, after_index=start - 1, limit=count)
            return [t for t in tasks if t.state == TaskState.QUEUED]

        return read

    def resync(self) -> None:
        """Forgets what is in memory and reloads it from the store, after a failed commit
        left memory ahead of what is durable. Sessions stay; their leases are re-read."""
        self.jobs.clear()
        self.load()
        for session in self.sessions.values():
            session.leases.clear()
            session.digests.clear()
            attempts = self.store.running_attempts(session.node.id)
            tasks = {t.id: t for t in self.store.get_tasks([a.task_id for a in attempts])}
            for attempt in attempts:
                self._hold(session, attempt, tasks[attempt.task_id])

    def hold_replica(self, active: ActiveJob, replica: Replica) -> None:
        """Keeps a result for comparison; its owner gets no other attempt at the task."""
        if not replica.known_answer:
            active.results[replica.task_id] += 1
        active.excluded.setdefault(replica.task_id, set()).add(replica.owner)
        if replica.state == ReplicaState.PENDING:
            active.replicas.setdefault(replica.task_id, []).append(replica)

    def forget_replicas(self, active: ActiveJob, task_id: str) -> None:
        active.replicas.pop(task_id, None)
        active.excluded.pop(task_id, None)
        active.results.pop(task_id, None)

    def others_online(self, active: ActiveJob, owners: set[str]) -> bool:
        """Whether a connected node of a vetted owner not in `owners` could run the job's
        tasks and is taking work: it granted credit for a device that fits, or holds a task
        there, and its volunteer has not paused it (owner at the keyboard, too hot, outside
        its window). A check never waits on a device that may stay paused for hours, nor on
        a node that connects and never takes work."""
        return any(
            session.node.owner not in owners
            and self.vetted(session.node.owner)
            and session.taking_work(device.index)
            and self._eligible(active, session.node, device)
            for session, device in self._offered()
        )

    def _offered(self) -> Iterator[tuple[NodeSession, Device]]:
        """The devices of connected nodes that may get work: not draining, not quarantined
        or banned (a device its volunteer paused is among them)."""
        for session in self.sessions.values():
            if not session.draining and not self.blocked(session.node.id):
                yield from ((session, device) for device in session.node.devices)

    def waiting(self, active: ActiveJob) -> str:
        """Why the job's queued tasks cannot all run on the nodes connected now, in words
        for its client; "" when they can (they may still wait for a free device)."""
        if not active.queue:
            return ""
        job, owners, paused, unvetted = active.job, set[str](), 0, 0
        closest = (-1, "")  # the need of the device that met the most requirements
        for session, device in self._offered():
            met, need = self._lack(active, session.node, device)
            if need:
                closest = max(closest, (met, need))
            elif device.index in session.paused:
                paused += 1
            elif job.replicas >= 2 and not self.vetted(session.node.owner):
                unvetted += 1
            else:
                owners.add(session.node.owner)
                if len(owners) >= max(job.replicas, 1):
                    break  # enough owners can take its tasks
        if job.replicas > max(len(owners), 1) and (owners or unvetted):
            text = (
                f"policy {job.quorum} of {job.replicas} needs results from {job.replicas} "
                f"different owners; nodes of {len(owners)} owner(s) can run it now"
            )
            if unvetted:
                text += f" ({unvetted} device(s) of nodes without an owner account do not count)"
            return text
        if owners:
            return self._held_waiting(active)
        if paused:
            return (
                f"{paused} device(s) that can run it are paused by their volunteers "
                "(in use by their owner, too hot, or outside their hours)"
            )
        if closest[1]:
            return f"no connected node can run it: it needs {closest[1]}"
        return "no worker is connected"

    def _held_waiting(self, active: ActiveJob, limit: int = 100) -> str:
        """Why tasks whose results wait for a check or a decision cannot get one now."""
        anonymous = disputed = 0
        online: dict[frozenset[str], bool] = {}
        for task_id, held in list(active.replicas.items())[:limit]:
            if task_id in active.running:
                continue
            excluded = frozenset(active.excluded.get(task_id, ()))
            if excluded not in online:
                online[excluded] = self.others_online(active, set(excluded))
            if online[excluded]:
                continue
            owners = {r.owner for r in held if self.vetted(r.owner)}
            if not owners:
                anonymous += 1
            elif len(owners) >= 2:
                disputed += 1
        reasons = []
        if anonymous:
            reasons.append(
                f"{anonymous} result(s) of nodes without an owner account wait for a check by "
                "a node of an owner account"
            )
        if disputed:
            reasons.append(
                f"{disputed} task(s) have results of different owners that disagree and wait "
                "for a node of another owner to decide"
            )
        if not reasons:
            return ""
        return "; ".join(reasons) + ": no such node that can run it is connected and taking work"

    def add_job(
        self, job: Job, owner: str, tasks: list[Task], unread: list[range] | None = None
    ) -> None:
        """A job to schedule, `tasks` queued, then the tasks whose indexes are in `unread`,
        read from the store when taken (a large job's); a retried job's other tasks
        succeeded."""
        queue = TaskQueue(tasks, unread, self._reader(job.id))
        active = ActiveJob(job, owner, queue, {}, len(queue))
        active.succeeded = job.task_count - len(queue)
        self.jobs[job.id] = active
        self.sweeps.pop(job.id, None)  # retried: its queued tasks are queued again

    def finish(self, active: ActiveJob, state: JobState | None = None, error: str = "") -> None:
        """Ends a job: cancels what is left, refunds the rest of the escrow."""
        job = active.job
        if state is None:
            state = JobState.FAILED if active.failed else JobState.SUCCEEDED
        if state == JobState.FAILED and active.failed and not error:
            error = (
                f"{active.failed} of {job.task_count} task(s) failed; first: {job.error}; "
                f"`sparegrid job retry {job.id} --failed` runs them again"
            )
            job.error = ""
        cancelled = list(active.held.values())
        if len(active.queue) > self.config.sweep_above:
            self.sweeps[job.id] = Sweep(job.id, job.task_count, active.queue)
        else:
            cancelled += active.queue.materialised()
        leftover = list(active.running.values())
        if leftover:
            cancelled += self.store.get_tasks([a.task_id for a in leftover])
        for task in cancelled:
            move_task(task, TaskState.CANCELLED)
        for attempt in leftover:
            move_attempt(attempt, AttemptState.CANCELLED)
            attempt.finished_at = self.clock.now()
        move_job(job, state)
        job.error = job.error or error
        job.finished_at = self.clock.now()
        job.tasks_succeeded, job.tasks_failed = active.succeeded, active.failed
        with self.store.transaction():
            self.store.update_tasks(cancelled)
            self.store.update_attempts(leftover)
            self.store.update_job(job)
            self.ledger.refund(job, active.owner)
        del self.jobs[job.id]
        for attempt in leftover:
            self._release(attempt, cancel_reason=f"job {job.id} is {state}")
        self.on_change([job.id])

    def sweep_again(self, job: Job) -> None:
        """Sweeps an ended job's queued tasks (again) from its first index."""
        self.sweeps[job.id] = Sweep(job.id, job.task_count, TaskQueue())

    def sweep(self, limit: int) -> int:
        """Marks queued tasks of an ended job cancelled, `limit` task indexes of one job at
        a time; returns how many indexes it covered (0: nothing left to sweep)."""
        sweep = next(iter(self.sweeps.values()), None)
        if sweep is None:
            return 0
        stop = min(sweep.start + max(limit, 1), sweep.stop)
        self.store.cancel_queued_tasks(sweep.job_id, sweep.start, stop)
        sweep.left.drop(stop - sweep.start)  # freed a slice at a time, not all in one turn
        covered, sweep.start = stop - sweep.start, stop
        if stop >= sweep.stop:
            del self.sweeps[sweep.job_id]
        return max(covered, 1)

    # --- sessions -----------------------------------------------------------

    def connect(
        self, node: Node, sink: SessionSink, running: list[str], budget: float = 0.0
    ) -> tuple[list[str], list[str]]:
        """Attaches a node's new session; returns (resumed, cancelled) attempt ids.
        `budget`: the seconds the worker says it lets a task run (0: not said)."""
        node.owner = owner_of(node)
        old = self.sessions.pop(node.id, None)
        if old is not None:
            old.sink.close()
        cap = self.config.max_attempt_seconds
        max_age = min(budget, cap) if budget > 0 else cap
        session = NodeSession(
            node,
            sink,
            credit={d.index: 0 for d in node.devices},
            max_age=max_age * 1.25 + self.config.lease_seconds,
        )
        self.sessions[node.id] = session
        now = self.clock.now()
        mine = {a.id: a for a in self.store.running_attempts(node.id)}
        resumed = [mine.pop(i) for i in running if i in mine]
        tasks = {t.id: t for t in self.store.get_tasks([a.task_id for a in resumed])}
        for attempt in resumed:
            attempt.deadline = min(now + self.config.lease_seconds, self._oldest(session, attempt))
            self._hold(session, attempt, tasks[attempt.task_id])
        self.store.update_attempts(resumed)
        # running attempts the node no longer reports were lost: it restarted (a crash, a
        # kill, a reboot) without them, which is not a failure of the node or the task
        self.lose(list(mine.values()), reason="the node restarted without it")
        kept = {a.id for a in resumed}
        return sorted(kept), [i for i in running if i not in kept]

    def disconnect(self, node_id: str, sink: SessionSink) -> None:
        """The stream ended: its leases get a short grace to resume, then expire."""
        session = self.sessions.get(node_id)
        if session is None or session.sink is not sink:
            return
        del self.sessions[node_id]
        deadline = self.clock.now() + self.config.reconnect_grace_seconds
        attempts = [lease.attempt for lease in session.leases.values()]
        for attempt in attempts:
            attempt.deadline = min(attempt.deadline, deadline)
        self.store.update_attempts(attempts)

    def grant(self, node_id: str, device_index: int, count: int, reset: bool = False) -> None:
        """Adds credit; `reset` sets it instead (0: the node paused that device)."""
        session = self.sessions[node_id]
        if device_index not in session.credit:
            raise ValueError(f"node {node_id} has no device {device_index}")
        base = 0 if reset else session.credit[device_index]
        session.credit[device_index] = min(base + count, 100_000)
        if reset and count == 0:
            session.paused.add(device_index)
        elif count > 0:
            session.paused.discard(device_index)
            session.granted.add(device_index)

    def heartbeat(self, node_id: str) -> None:
        """Renews the node's leases, none past its attempts' maximum age: a node that only
        sends heartbeats cannot hold a task for ever."""
        session = self.sessions.get(node_id)
        deadline = self.clock.now() + self.config.lease_seconds
        if session is not None and session.leases:
            self.store.renew_leases(node_id, deadline, session.max_age)
            for lease in session.leases.values():
                lease.attempt.deadline = min(deadline, self._oldest(session, lease.attempt))

    @staticmethod
    def _oldest(session: NodeSession, attempt: Attempt) -> float:
        """When an attempt of this session reaches its maximum age."""
        return attempt.created_at + session.max_age

    def window(self, node_id: str) -> int:
        """How many tasks the node may hold at once now. A node this coordinator has not
        seen yet starts where its accepted results so far (its reputation) take it."""
        found = self.windows.get(node_id)
        if found is None:
            session = self.sessions.get(node_id)
            anonymous = session is None or not self.vetted(session.node.owner)
            start = 1 if anonymous else self.config.initial_window
            found = self.windows[node_id] = min(
                start + self.proven(node_id), self.config.max_window
            )
        return int(found)

    def returned(self, node_id: str, results: int) -> None:
        """The node returned results: its window grows by one per result."""
        grown = self.window(node_id) + results
        self.windows[node_id] = min(grown, self.config.max_window)

    def shrink(self, node_id: str, reset: bool = False) -> None:
        """A lease of the node ran out (the window halves) or it was struck (back to the
        start)."""
        if reset:
            self.windows[node_id] = 1
        else:
            self.windows[node_id] = max(1, self.window(node_id) // 2)

    def drain(self, node_id: str) -> None:
        session = self.sessions.get(node_id)
        if session is not None:
            session.draining = True

    def may_read(self, node_id: str, digest: str) -> bool:
        session = self.sessions.get(node_id)
        return session is not None and session.digests[digest] > 0

    def _hold(self, session: NodeSession, attempt: Attempt, task: Task) -> None:
        digests = [ref.digest for ref in task.inputs]
        session.leases[attempt.id] = Lease(attempt, task, digests)
        session.digests.update(digests)
        active = self.jobs.get(attempt.job_id)
        if active is not None:
            active.running[attempt.task_id] = attempt

    def _release(self, attempt: Attempt, cancel_reason: str = "") -> None:
        """Forgets a lease in memory; tells the node to stop when a reason is given."""
        active = self.jobs.get(attempt.job_id)
        running = active.running.get(attempt.task_id) if active is not None else None
        if active is not None and running is not None and running.id == attempt.id:
            del active.running[attempt.task_id]
        session = self.sessions.get(attempt.node_id)
        lease = session.leases.pop(attempt.id, None) if session is not None else None
        if session is None or lease is None:
            return
        session.digests.subtract(lease.digests)
        if cancel_reason:
            session.sink.cancel([attempt.id], cancel_reason)

    # --- dispatch -----------------------------------------------------------

    def dispatch(self) -> int:
        """Leases queued tasks to sessions with credit; returns how many were sent."""
        picked: list[tuple[NodeSession, Attempt, Task, ActiveJob]] = []
        now = self.clock.now()
        for session in self.sessions.values():
            if not session.draining:
                self._pick(session, now, picked)
        if not picked:
            return 0
        started = {id(a.job) for _, _, _, a in picked if a.job.state == JobState.QUEUED}
        with self.store.transaction():
            won = {a.id for a in self.store.lease_tasks([p[1] for p in picked])}
            for active in {id(p[3].job): p[3] for p in picked}.values():
                if id(active.job) in started:
                    move_job(active.job, JobState.RUNNING)
                    self.store.update_job(active.job)
        outgoing: dict[str, list[tuple[Attempt, Task, str]]] = {}
        for session, attempt, task, active in picked:
            if attempt.id not in won:  # leased meanwhile by another coordinator
                session.credit[attempt.device_index] += 1
                continue
            task.attempts += 1
            task.state = TaskState.LEASED
            self._hold(session, attempt, task)
            outgoing.setdefault(session.node.id, []).append((attempt, task, active.job.kind))
        for node_id, items in outgoing.items():
            self.sessions[node_id].sink.assign(items)
        if started:
            self.on_change(a.job.id for _, _, _, a in picked if id(a.job) in started)
        return len(won)

    def _pick(
        self,
        session: NodeSession,
        now: float,
        picked: list[tuple[NodeSession, Attempt, Task, ActiveJob]],
    ) -> None:
        node = session.node
        if self.blocked(node.id):
            return
        room = self.window(node.id) - len(session.leases)
        vetted = self.vetted(node.owner)
        for index, credit in session.credit.items():
            device = session.device(index)
            if credit <= 0 or device is None or room <= 0:
                continue
            for active in self.jobs.values():
                if not active.queue or not self._eligible(active, node, device):
                    continue
                if active.job.replicas >= 2 and not vetted:
                    continue  # a quorum is made of vetted owners only
                wanted = min(credit, room)
                for task in self._take(active, node.owner, vetted, wanted, device.memory_bytes):
                    held = active.replicas.get(task.id)
                    attempt = Attempt(
                        id=new_id(),
                        task_id=task.id,
                        job_id=task.job_id,
                        node_id=node.id,
                        device_index=index,
                        deadline=now + self.config.lease_seconds,
                        created_at=now,
                        params=self.check_params(active.job, task, held) if held else b"",
                    )
                    picked.append((session, attempt, task, active))
                    credit -= 1
                    room -= 1
                if not credit or room <= 0:
                    break
            session.credit[index] = credit

    @staticmethod
    def _take(active: ActiveJob, owner: str, vetted: bool, count: int, memory: int) -> list[Task]:
        """Up to `count` queued tasks an owner's device may run, from the front of the
        queue: never to an owner that has returned a result for the task already, a task
        held for a check never to a node whose result would not count, nor to a device with
        no more memory than one the task ran out of."""
        if not active.excluded and not active.needs_memory:
            return active.queue.take(count)

        def skip(task: Task) -> bool:
            too_small = memory < active.needs_memory.get(task.id, 0)
            held = not vetted and bool(active.replicas.get(task.id))
            return too_small or held or owner in active.excluded.get(task.id, ())

        return active.queue.take(count, skip)

    def _eligible(self, active: ActiveJob, node: Node, device: Device) -> bool:
        return not self._lack(active, node, device)[1]

    def _lack(self, active: ActiveJob, node: Node, device: Device) -> tuple[int, str]:
        """What a device lacks for a job's tasks, as misfit says, or a node that keeps failing
        them; (met, "") when it may take them."""
        met, need = misfit(active.job, node, device)
        if active.node_failures[node.id] >= self.config.max_node_failures_per_job:
            return met + 1, need or "a node that has not failed its tasks"
        return met, need

    # --- taking leases back -------------------------------------------------

    def reap(self) -> int:
        """Expires every lease past its deadline, and takes stragglers back; returns how
        many. A lease of a node that went away and did not come back within the reconnect
        grace was lost with it."""
        expired = self.store.expired_attempts(self.clock.now())
        gone = [a for a in expired if a.node_id not in self.sessions]
        self.lose(gone, reason="its node went away and did not come back in time")
        self.expire([a for a in expired if a.node_id in self.sessions], reason="lease expired")
        stragglers = self._stragglers()
        self._take_back(stragglers)
        return len(expired) + len(stragglers)

    def took(self, active: ActiveJob, attempt: Attempt) -> None:
        """An attempt returned its result: how long it took, for what a straggler is."""
        session = self.sessions.get(attempt.node_id)
        device = session.device(attempt.device_index) if session is not None else None
        active.returned[attempt.node_id] += 1
        if device is not None:
            kept = active.durations.setdefault(device.kind, deque(maxlen=100))
            kept.append(self.clock.now() - attempt.created_at)

    def _take_back(self, stragglers: list[tuple[Attempt, str]]) -> None:
        """Stragglers lose their lease: their tasks go back to the front of the queue,
        never to that owner again. A task may just be heavy: that is not counted against
        its attempts, and a node that has returned results of the job may then take all
        the time it needs for it. It counts against the node as a lost lease does: its
        window halves, and two keep it off the job."""
        if not stragglers:
            return
        tasks = {t.id: t for t in self.store.get_tasks([a.task_id for a, _ in stragglers])}
        now = self.clock.now()
        for attempt, reason in stragglers:
            active, task = self.jobs[attempt.job_id], tasks[attempt.task_id]
            move_attempt(attempt, AttemptState.EXPIRED)
            attempt.finished_at, attempt.error_code, attempt.error = now, "STRAGGLER", reason
            active.straggled.add(task.id)
            session = self.sessions.get(attempt.node_id)
            owner = session.node.owner if session is not None else f"node:{attempt.node_id}"
            active.excluded.setdefault(task.id, set()).add(owner)
            self._release(attempt, cancel_reason=reason)
            self.shrink(attempt.node_id)
            active.node_failures[attempt.node_id] += 1
            task.attempts = max(task.attempts - 1, 0)
            move_task(task, TaskState.QUEUED)
            active.queue.appendleft(task)
        self.store.update_attempts([a for a, _ in stragglers])
        self.store.update_tasks(list(tasks.values()))
        log.info("%d straggling attempt(s) taken back", len(stragglers))

    def _stragglers(self) -> list[tuple[Attempt, str]]:
        cfg, now = self.config, self.clock.now()
        found = []
        for active in self.jobs.values():
            for attempt in list(active.running.values()):
                if attempt.task_id in active.straggled and active.returned[attempt.node_id]:
                    continue  # a heavy task, on a node that works on this job
                session = self.sessions.get(attempt.node_id)
                device = session.device(attempt.device_index) if session is not None else None
                taken = active.durations.get(device.kind, ()) if device is not None else ()
                if device is None or len(taken) < cfg.straggler_samples:
                    continue
                p90 = sorted(taken)[int(0.9 * (len(taken) - 1))]
                lease = session.leases.get(attempt.id) if session is not None else None
                inputs = sum(r.size for r in lease.task.inputs) if lease is not None else 0
                floor = cfg.straggler_floor_seconds + inputs / cfg.straggler_download_rate
                limit = max(floor, cfg.straggler_factor * p90)
                if now - attempt.created_at > limit:
                    reason = (
                        f"ran {now - attempt.created_at:.0f}s, over {cfg.straggler_factor:g}x "
                        f"what 9 in 10 of the job's tasks took on a {device.kind} ({p90:.1f}s)"
                    )
                    found.append((attempt, reason))
        return found

    def lose(self, attempts: list[Attempt], reason: str) -> None:
        """Attempts lost with their node (a crash is not a failure): their tasks go back to
        the front of the queue with the attempt given back, and nothing counts against the
        node (no failure, no exclusion from the job) but its window, halved as for any
        lease that ran out. A task lost more times than its job's attempt limit counts as
        an expired lease from then on, so no task goes round for ever."""
        given: list[Attempt] = []
        counted: list[Attempt] = []
        for attempt in attempts:
            active = self.jobs.get(attempt.job_id)
            if active is not None and active.lost[attempt.task_id] >= active.job.max_attempts:
                counted.append(attempt)
                continue
            if active is not None:
                active.lost[attempt.task_id] += 1
            move_attempt(attempt, AttemptState.CANCELLED)
            attempt.finished_at = self.clock.now()
            attempt.error_code, attempt.error = NODE_LOST, reason
            given.append(attempt)
        for node_id in {a.node_id for a in given}:
            self.shrink(node_id)
        self.give_back(given)
        self.expire(counted, reason=f"{reason}, and the task was lost that way too often")

    def expire(self, attempts: list[Attempt], reason: str) -> None:
        for node_id in {a.node_id for a in attempts}:
            self.shrink(node_id)
        for attempt in attempts:
            move_attempt(attempt, AttemptState.EXPIRED)
            attempt.finished_at = self.clock.now()
            attempt.error_code, attempt.error = "LEASE_EXPIRED", reason
        self.settle_failures(attempts, retryable=True, tell_node=True)

    def _needs_more_memory(self, active: ActiveJob, task: Task, attempt: Attempt) -> bool:
        """Records that `task` needs a device with more memory than the one it ran out of;
        False (with the task's error set) when no connected node has such a device."""
        session = self.sessions.get(attempt.node_id)
        device = session.device(attempt.device_index) if session is not None else None
        if device is None or device.memory_bytes <= 0:
            return True
        need = max(active.needs_memory.get(task.id, 0), device.memory_bytes + 1)
        active.needs_memory[task.id] = need
        for other in self.sessions.values():
            if any(
                d.memory_bytes >= need and fits(active.job, other.node, d)
                for d in other.node.devices
            ):
                return True
        attempt.error += (
            f"; no connected device has more than {device.memory_bytes / 2**30:.1f} GiB"
        )
        return False

    def give_back(self, attempts: list[Attempt]) -> None:
        """Attempts that were no fault of their node or task: a node's own policy stopped
        them (owner back, too hot, window closed), or they were lost with their node. Their
        tasks go back to the front of the queue with the attempt given back, and nothing
        counts against the node (no failure count, no exclusion from the job)."""
        if not attempts:
            return
        tasks = {t.id: t for t in self.store.get_tasks([a.task_id for a in attempts])}
        requeue: list[tuple[ActiveJob, Task]] = []
        with self.store.transaction():
            self.store.update_attempts(attempts)
            for attempt in attempts:
                active = self.jobs.get(attempt.job_id)
                task = tasks[attempt.task_id]
                self._release(attempt)
                if active is None or task.state != TaskState.LEASED:
                    continue
                task.attempts = max(task.attempts - 1, 0)
                move_task(task, TaskState.QUEUED)
                requeue.append((active, task))
            self.store.update_tasks(list(tasks.values()))
        for active, task in requeue:
            active.queue.appendleft(task)
        log.info("%d attempt(s) given back, %d task(s) re-queued", len(attempts), len(requeue))

    def settle_failures(
        self, attempts: list[Attempt], retryable: bool | list[bool], tell_node: bool = False
    ) -> None:
        """Records failed or expired attempts; re-queues their tasks or fails their jobs."""
        if not attempts:
            return
        flags = [retryable] * len(attempts) if isinstance(retryable, bool) else retryable
        tasks = {t.id: t for t in self.store.get_tasks([a.task_id for a in attempts])}
        requeue: list[tuple[ActiveJob, Task]] = []
        doomed: list[tuple[ActiveJob, str]] = []
        with self.store.transaction():
            self.store.update_attempts(attempts)
            for attempt, again in zip(attempts, flags, strict=True):
                self.store.add_node_counts(attempt.node_id, 0, 1)
                active = self.jobs.get(attempt.job_id)
                task = tasks[attempt.task_id]
                self._release(attempt, cancel_reason=attempt.error if tell_node else "")
                if active is None or task.state != TaskState.LEASED:
                    continue  # the job ended, or another attempt finished the task
                active.node_failures[attempt.node_id] += 1
                failures = task.attempts - active.results[task.id]
                if attempt.error_code == OUT_OF_MEMORY and again:
                    again = self._needs_more_memory(active, task, attempt)
                if again and failures < active.job.max_attempts:
                    move_task(task, TaskState.QUEUED)
                    requeue.append((active, task))
                else:
                    move_task(task, TaskState.FAILED)
                    task.error = f"{attempt.error_code}: {attempt.error}"
                    active.open_tasks -= 1
                    active.failed += 1
                    doomed.append((active, f"task {task.index} failed: {task.error}"))
            self.store.update_tasks(list(tasks.values()))
        for active, task in requeue:
            active.queue.appendleft(task)
        for active, error in doomed:
            if active.job.id in self.jobs:
                self.finish(active, JobState.FAILED, error)
        log.info("%d attempt(s) failed or expired, %d re-queued", len(attempts), len(requeue))
