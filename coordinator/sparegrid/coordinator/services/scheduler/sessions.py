"""Connected sessions: attaching and detaching nodes, their credit, heartbeats, windows
and the leases each holds."""

from sparegrid.coordinator.domain import (
    Attempt,
    Node,
    Task,
    owner_of,
)
from sparegrid.coordinator.services.scheduler.base import (
    Lease,
    NodeSession,
    SchedulerBase,
    SessionSink,
)


class SessionsPart(SchedulerBase):
    """Connected sessions: attach, detach, credit, heartbeats, windows, leases held."""

    def connect(
        self, node: Node, sink: SessionSink, running: list[str], budget: float = 0.0
    ) -> tuple[list[str], list[str]]:
        """Attaches a node's new session; returns (resumed, cancelled) attempt ids.
        `budget`: the seconds the worker says it lets a task run (0: not said)."""
        node.owner = owner_of(node)
        old = self.sessions.pop(node.id, None)
        if old is not None:
            self.unindex(old)
            old.sink.close()
        cap = self.config.max_attempt_seconds
        max_age = min(budget, cap) if budget > 0 else cap
        session = NodeSession(
            node,
            sink,
            credit={d.index: 0 for d in node.devices},
            max_age=self.full_age(max_age),
            seq=next(self.connects),
        )
        self.sessions[node.id] = session
        now = self.clock.now()
        mine = {a.id: a for a in self.store.running_attempts(node.id)}
        resumed = [mine.pop(i) for i in running if i in mine]
        if resumed:  # a node that was not running anything costs no more queries
            tasks = {t.id: t for t in self.store.get_tasks([a.task_id for a in resumed])}
            for attempt in resumed:
                deadline = min(now + self.config.lease_seconds, self._oldest(session, attempt))
                attempt.deadline = deadline
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
        self.unindex(session)
        self.due.pop(node_id, None)
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
        self.due[node_id] = None

    def holds_leases(self, node_id: str) -> bool:
        """Whether a heartbeat of the node has leases to renew (else it costs nothing)."""
        session = self.sessions.get(node_id)
        return session is not None and bool(session.leases)

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
        if node_id in self.sessions:
            self.due[node_id] = None

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
        self.due[attempt.node_id] = None  # room for another task
        if cancel_reason:
            session.sink.cancel([attempt.id], cancel_reason)

    def index(self, session: NodeSession) -> None:
        """Files a session under the capability classes (executor, device kind) of its
        devices that still have credit and room after a dispatch pass: when a queue of
        such a class grows, these are the sessions the next pass looks at."""
        self.unindex(session)
        node = session.node
        if session.draining or self.window(node.id) <= len(session.leases):
            return
        for device in node.devices:
            if session.credit.get(device.index, 0) <= 0:
                continue
            for executor in node.executors:
                kinds = self.waiting_by_class.setdefault(executor, {})
                kinds.setdefault(device.kind, {})[node.id] = None
                session.classes.add((executor, device.kind))

    def unindex(self, session: NodeSession) -> None:
        for executor, kind in session.classes:
            self.waiting_by_class.get(executor, {}).get(kind, {}).pop(session.node.id, None)
        session.classes.clear()
