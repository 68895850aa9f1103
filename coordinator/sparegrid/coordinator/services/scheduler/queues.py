"""Active jobs: their queues rebuilt from the store, replicas held for comparison, why a
job waits, and ending a job (its leftover tasks swept a range at a time)."""

from collections.abc import Iterator

from sparegrid.coordinator.domain import (
    Attempt,
    AttemptState,
    Claim,
    Device,
    Job,
    JobState,
    Node,
    Replica,
    ReplicaState,
    Task,
    TaskState,
    owner_of,
)
from sparegrid.coordinator.services.events import EventKind
from sparegrid.coordinator.services.scheduler.base import (
    ActiveJob,
    NodeSession,
    Sweep,
)
from sparegrid.coordinator.services.scheduler.dispatch import DispatchPart, Needs, misfit
from sparegrid.coordinator.services.taskqueue import Reader, TaskQueue
from sparegrid.coordinator.states import FINAL_JOB_STATES, move_attempt, move_job, move_task


class QueuesPart(DispatchPart):
    """The active jobs' queues, replicas, waits and endings."""

    def load(self) -> None:
        """Rebuilds the queues from the store after a start or restart."""
        self._order = None
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
        self._load_claims()
        open_ids = [t.id for a in self.jobs.values() for t in a.queue.materialised()]
        open_ids += [a.task_id for a in running if a.job_id in self.jobs]
        for replica in self.store.get_replicas(open_ids):
            self.hold_replica(self.jobs[replica.job_id], replica)
        for active_job in list(self.jobs.values()):
            active_job.queue = self._compact(active_job)
            if active_job.open_tasks == 0:
                self.finish(active_job)

    def _load_claims(self) -> None:
        """What the failures of the open tasks counted for, as written with each attempt
        (Claim): a restart, or a standby taking over, would otherwise forget that an owner
        called a task's failure final, failed it, was kept off it, or is owed for its
        timeout, or that the task ran out of memory on a device, and let that owner take
        the task again, ask a second owner's claim to be made twice, or give the task back
        to devices as small. Decisions made on what was online then are kept, not made
        again."""
        nodes: dict[str, Node | None] = {}
        for attempt, owner in self.store.failure_claims(list(self.jobs)):
            active, task_id, claims = self.jobs[attempt.job_id], attempt.task_id, attempt.claims
            if Claim.DOUBTED in claims:
                active.doubted.add(task_id)
            if Claim.COUNTED in claims:
                active.failed_by.setdefault(task_id, set()).add(owner)
            if Claim.FINAL in claims:
                active.final_claims.setdefault(task_id, set()).add(owner)
            if Claim.FAULT in claims:  # oldest first: each owner's first is the one paid
                active.faults.setdefault(task_id, {}).setdefault(owner, attempt)
            if Claim.KEPT_OFF in claims:
                active.excluded.setdefault(task_id, set()).add(owner)
            if Claim.OUT_OF_MEMORY in claims:
                self._load_need(active, attempt, nodes)

    def _load_need(
        self, active: ActiveJob, attempt: Attempt, nodes: dict[str, Node | None]
    ) -> None:
        """An attempt that ran out of device memory (oldest first, as they were settled):
        its task needs more memory than the device its node has stored at that index, or,
        with FINAL, no connected device was larger then and the need was forgotten
        (LeasesPart._needs_more_memory). A node or device no longer known adds nothing.
        A need no connected device meets does not fail the task here: nodes reconnect
        after a restart over time, and until one large enough does, the task waits.
        `nodes`: those read so far, each read once."""
        task_id = attempt.task_id
        if Claim.FINAL in attempt.claims:
            active.needs_memory.pop(task_id, None)
            return
        if attempt.node_id not in nodes:
            nodes[attempt.node_id] = self.store.get_node(attempt.node_id)
        node = nodes[attempt.node_id]
        devices = node.devices if node is not None else []
        device = next((d for d in devices if d.index == attempt.device_index), None)
        if device is None or device.memory_bytes <= 0:
            return
        need = max(active.needs_memory.get(task_id, 0), device.memory_bytes + 1)
        active.needs_memory[task_id] = need

    def _compact(self, active: ActiveJob) -> TaskQueue:
        """A large job's queue as ranges of task indexes, read back from the store when
        taken; tasks with results held for comparison stay objects."""
        queue = active.queue
        if len(queue) <= self.config.sweep_above:
            return queue
        tasks = list(queue.materialised())
        kept = active.excluded.keys() | active.needs_memory.keys() | active.doubted
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
        self.due.update(dict.fromkeys(self.sessions))
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
        active.doubted.discard(task_id)
        active.final_claims.pop(task_id, None)
        active.failed_by.pop(task_id, None)
        active.faults.pop(task_id, None)

    def others_online(self, active: ActiveJob, owners: set[str]) -> bool:
        """Whether a connected node of a vetted owner not in `owners` could run the job's
        tasks and is taking work: it granted credit for a device that fits, or holds a task
        there, and its volunteer has not paused it (owner at the keyboard, too hot, outside
        its window). A check never waits on a device that may stay paused for hours, nor on
        a node that connects and never takes work."""
        if self._hinted(active, owners):
            return True
        for session, device in self._offered():
            if self._could_check(active, owners, session, device):
                active.online_hint = (session.node.id, device.index)
                return True
        return False

    def _hinted(self, active: ActiveJob, owners: set[str]) -> bool:
        """Whether the device that answered last time answers again."""
        if active.online_hint is None:
            return False
        node_id, index = active.online_hint
        session = self.sessions.get(node_id)
        device = session.device(index) if session is not None else None
        return (
            session is not None
            and device is not None
            and self._offers(session, self.clock.now())
            and self._could_check(active, owners, session, device)
        )

    def _could_check(
        self, active: ActiveJob, owners: set[str], session: NodeSession, device: Device
    ) -> bool:
        return (
            session.node.owner not in owners
            and self.vetted(session.node.owner)
            and session.taking_work(device.index)
            and self._eligible(active, session.node, device)
        )

    def _offers(self, session: NodeSession, now: float) -> bool:
        """Whether the node may get work: not draining, not quarantined or banned, its
        owner not over its stored quota."""
        node = session.node
        return not session.draining and not self.blocked(node.id) and not self.full(node, now)

    def _offered(self) -> Iterator[tuple[NodeSession, Device]]:
        """The devices of connected nodes that may get work (`_offers`; a device its
        volunteer paused is among them)."""
        now = self.clock.now()
        for session in self.sessions.values():
            if self._offers(session, now):
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
        now = self.clock.now()
        full = {owner_of(s.node) for s in self.sessions.values() if self.full(s.node, now)}
        if full:
            pool = ""
            if self.pool_full(now):
                pool = "; nodes without an owner account share --anonymous-stored-quota, full"
            return (
                f"the connected nodes belong to {len(full)} owner(s) over their stored quota "
                f"(--stored-quota; results they keep count against it{pool}): they take "
                "work again once a sweep or the operator makes room"
            )
        return "no worker is connected"

    def unmet(self, job: Needs) -> str:
        """Why a job of these needs could not run on any node connected now, in the words
        `waiting` uses; "" when a device fits (busy or paused: it may still wait). For an
        estimate, before anything is charged: the requirements only, not quorum or quota."""
        closest = (-1, "")
        for session, device in self._offered():
            met, need = misfit(job, session.node, device)
            if not need:
                return ""
            closest = max(closest, (met, need))
        if closest[1]:
            return f"no connected node can run it: it needs {closest[1]}"
        return "" if self.sessions else "no worker is connected"

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
        self._order = None
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
        else:  # those not read yet too (a retry's): a few, read at once
            cancelled += active.queue.take(len(active.queue))
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
            self.ended(job)
        if self.events is not None:
            ended = f"job {job.id} {state}" + (f": {job.error}" if job.error else "")
            self.events.emit(
                EventKind.JOB_FINISHED,
                ended,
                job_id=job.id,
                account=active.owner,
                state=state.value,
                job_kind=job.kind,
                succeeded=active.succeeded,
                failed=active.failed,
                tasks=job.task_count,
            )
        del self.jobs[job.id]
        self._order = None
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
