"""Dispatch: which device of which node meets a job's requirements, and leasing queued
tasks to sessions with credit in one store transaction."""

from collections import Counter
from typing import Protocol

from sparegrid.coordinator.domain import (
    Attempt,
    Device,
    Job,
    JobState,
    Node,
    Requirements,
    Task,
    TaskState,
    new_id,
    owner_of,
)
from sparegrid.coordinator.services.identity import is_anonymous
from sparegrid.coordinator.services.scheduler.base import (
    ActiveJob,
    NodeSession,
)
from sparegrid.coordinator.services.scheduler.sessions import SessionsPart
from sparegrid.coordinator.states import move_job
from sparegrid.coordinator.store.base import ANONYMOUS_POOL


def version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".") if part.isdigit())


class Needs(Protocol):
    """What misfit reads of a job: a Job, or a JobSpec not submitted (an estimate)."""

    @property
    def kind(self) -> str: ...
    @property
    def requirements(self) -> Requirements: ...


def misfit(job: Needs, node: Node, device: Device) -> tuple[int, str]:
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
        needs = f"a GPU with {_memory(req.min_memory_bytes)} of memory or more"
        if device.kind == "cpu" and device.memory_bytes >= req.min_memory_bytes:
            # say how to use the CPU that could hold it (a generate job asks memory for its
            # model): without it a CPU-only network leaves the job waiting a day, unexplained
            needs += " (a CPU counts only for a job kept on CPUs: --device cpu, device='cpu')"
        return 2, needs
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


class DispatchPart(SessionsPart):
    """Leases queued tasks to sessions with credit."""

    def dispatch(self) -> int:
        """Leases queued tasks to sessions with credit; returns how many were sent.

        Only sessions that may have something new are examined: those whose credit or
        room grew since the last pass, and those waiting with credit in a capability
        class (executor, device kind) one of whose queues grew. Each examined session is
        filed again under the classes it still waits in."""
        found = (s for s in map(self.sessions.get, self._candidates()) if s is not None)
        examined = sorted(found, key=lambda s: s.seq)  # in connect order, as ever
        try:
            return self._lease(examined)
        finally:
            for session in examined:
                self.index(session)

    def rescan(self) -> None:
        """Asks the next pass to look again at every session waiting in the class of a job
        with queued tasks: what changed without a mark (a node unblocked, a vote that now
        counts) is seen within one reaper tick. Free while no task is queued."""
        if any(active.queue for active in self.jobs.values()):
            self.rescan_wanted = True

    def _candidates(self) -> list[str]:
        """The node ids the next pass examines, in the order they became due."""
        due, self.due = self.due, {}
        for active in self.jobs.values():
            queue = active.queue
            if not queue or (active.seen_version == queue.version and not self.rescan_wanted):
                continue
            active.seen_version = queue.version
            by_kind = self.waiting_by_class.get(active.job.kind, {})
            wanted = active.job.requirements.device_kind
            for kind, node_ids in by_kind.items():
                if not wanted or kind == wanted:
                    due.update(node_ids)
        self.rescan_wanted = False
        return list(due)

    def _lease(self, sessions: list[NodeSession]) -> int:
        picked: list[tuple[NodeSession, Attempt, Task, ActiveJob]] = []
        now = self.clock.now()
        order = self.dispatch_order()
        running = self._running_by_owner(order)
        for session in sessions:
            if not session.draining:
                self.scanned += 1
                self._pick(session, now, picked, order, running)
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
        self.leased_total += len(won)
        return len(won)

    def dispatch_order(self) -> list[ActiveJob]:
        """The jobs in the order nodes take their tasks: oldest first, except that an
        account's own jobs take the places its jobs hold in that order by priority (higher
        first, then oldest): a priority reorders an account's jobs, never puts them ahead of
        another account's."""
        if self._order is not None and len(self._order) == len(self.jobs):
            return self._order
        jobs = list(self.jobs.values())
        if any(a.job.priority for a in jobs):
            by_owner: dict[str, list[ActiveJob]] = {}
            for active in jobs:
                by_owner.setdefault(active.owner, []).append(active)
            ranked = {
                owner: iter(sorted(mine, key=lambda a: -a.job.priority))  # stable: oldest
                for owner, mine in by_owner.items()
            }
            jobs = [next(ranked[a.owner]) for a in jobs]
        self._order = jobs
        return jobs

    def _running_by_owner(self, order: list[ActiveJob]) -> Counter[str] | None:
        """Tasks running per account, when accounts are capped."""
        if not self.config.max_running_per_account:
            return None
        running: Counter[str] = Counter()
        for active in order:
            running[active.owner] += len(active.running)
        return running

    def capped(self, owner: str) -> str:
        """Why an account's queued tasks wait for its running ones; "" when they do not."""
        cap = self.config.max_running_per_account
        if not cap:
            return ""
        running = sum(len(a.running) for a in self.jobs.values() if a.owner == owner)
        if running < cap:
            return ""
        return (
            f"account {owner!r} runs {running} task(s), this coordinator's cap per account; "
            "the rest start as those finish"
        )

    def _pick(
        self,
        session: NodeSession,
        now: float,
        picked: list[tuple[NodeSession, Attempt, Task, ActiveJob]],
        order: list[ActiveJob],
        running: Counter[str] | None,
    ) -> None:
        node = session.node
        if self.blocked(node.id) or self._preempt_paused(node.id, now) or self.full(node, now):
            return
        room = self.window(node.id) - len(session.leases)
        vetted = self.vetted(node.owner)
        for index, credit in session.credit.items():
            device = session.device(index)
            if credit <= 0 or device is None or room <= 0:
                continue
            cap = self.config.max_running_per_account
            for active in order:
                if not active.queue or not self._eligible(active, node, device):
                    continue
                if active.job.replicas >= 2 and not vetted:
                    continue  # a quorum is made of vetted owners only
                wanted = min(credit, room)
                if running is not None:
                    wanted = min(wanted, cap - running[active.owner])
                    if wanted <= 0:
                        continue
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
                    if running is not None:
                        running[active.owner] += 1
                if not credit or room <= 0:
                    break
            session.credit[index] = credit

    def full(self, node: Node, now: float) -> bool:
        """Whether the node's owner was over its stored quota lately (turned_away), or,
        for a node without an owner account, the pool of all such nodes was."""
        owner = owner_of(node)
        paused = now < self.full_owners.get(owner, now)
        return paused or (is_anonymous(owner) and self.pool_full(now))

    def pool_full(self, now: float) -> bool:
        """Whether the anonymous pool's stored quota refused a result lately."""
        return now < self.full_owners.get(ANONYMOUS_POOL, now)

    def _preempt_paused(self, node_id: str, now: float) -> bool:
        """Whether a node that preempted a task lately is still kept from new ones."""
        until = self.preempt_paused.get(node_id)
        if until is None:
            return False
        if now < until:
            return True
        del self.preempt_paused[node_id]
        return False

    @staticmethod
    def _take(active: ActiveJob, owner: str, vetted: bool, count: int, memory: int) -> list[Task]:
        """Up to `count` queued tasks an owner's device may run, from the front of the
        queue: never to an owner that has returned a result for the task already, a task
        held for a check never to a node whose result would not count, nor to a device with
        no more memory than one the task ran out of, a task whose failure was doubted
        never to a node of no vetted owner."""
        if not active.excluded and not active.needs_memory and not active.doubted:
            return active.queue.take(count)

        def skip(task: Task) -> bool:
            too_small = memory < active.needs_memory.get(task.id, 0)
            held = not vetted and (bool(active.replicas.get(task.id)) or task.id in active.doubted)
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
