"""An in-memory store: the fake that service unit tests run on.

It keeps copies of the dataclasses in dicts and hands out copies. Every method checks
before it changes anything, so a single call is atomic; `transaction()` snapshots the
whole state at the outermost begin and puts it back if an exception escapes.
"""

import copy
import dataclasses
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from sparegrid.coordinator.domain import (
    NO_CLAIMS,
    Attempt,
    AttemptState,
    Delivery,
    Event,
    Job,
    JobState,
    Node,
    Task,
    TaskState,
    owner_of,
)
from sparegrid.coordinator.store.base import Conflict
from sparegrid.coordinator.store.memory_invites import MemoryInvites
from sparegrid.coordinator.store.memory_ledger import MemoryLedger
from sparegrid.coordinator.store.memory_results import MemoryResults
from sparegrid.coordinator.store.memory_state import _copies, _State
from sparegrid.coordinator.store.memory_storage import MemoryStorage
from sparegrid.coordinator.store.rules import FAILED_ATTEMPT_STATES


class MemoryStore(MemoryLedger, MemoryResults, MemoryStorage, MemoryInvites):
    """The fake store; its accounts and ledger are in memory_ledger.py, its replicas,
    reputations, disputes and attempt logs in memory_results.py, its storage bookkeeping
    in memory_storage.py, its invitation codes in memory_invites.py."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._depth = 0
        self._s = _State()

    @contextmanager
    def transaction(self, defer_commit: bool = False) -> Iterator[None]:
        with self._lock:
            snapshot = copy.deepcopy(self._s)  # nested too: a failure undoes only its block
            self._depth += 1
            try:
                yield
            except BaseException:
                if snapshot is not None:
                    self._s = snapshot
                raise
            finally:
                self._depth -= 1

    def finish_commit(self) -> None:
        """Nothing is left to commit: memory holds what a transaction did at its end."""

    def close(self) -> None:
        pass

    def reconnect(self) -> None:
        pass

    def refresh_statistics(self) -> list[str]:
        return []

    # jobs and tasks

    def create_job(self, job: Job, tasks: list[Task]) -> None:
        with self._lock:
            self._check_new_job(job, tasks)
            self._s.jobs[job.id] = copy.deepcopy(job)
            for task in tasks:
                self._s.tasks[task.id] = copy.deepcopy(task)
            by_index = sorted(tasks, key=lambda t: t.index)
            self._s.job_tasks[job.id] = [t.id for t in by_index]

    def _check_new_job(self, job: Job, tasks: list[Task]) -> None:
        if job.id in self._s.jobs:
            raise Conflict(f"job id {job.id!r} is taken")
        if job.idempotency_key and self.find_job(job.account_id, job.idempotency_key):
            raise Conflict(f"a job with idempotency key {job.idempotency_key!r} exists")
        if any(t.job_id != job.id for t in tasks):
            raise ValueError(f"every task of job {job.id} must carry its job id")
        ids = {t.id for t in tasks}
        if len(ids) < len(tasks) or ids & self._s.tasks.keys():
            raise Conflict(f"a task id of job {job.id} is taken")
        if len({t.index for t in tasks}) < len(tasks):
            raise Conflict(f"job {job.id} has two tasks with the same index")

    def add_tasks(self, tasks: list[Task]) -> None:
        with self._lock:
            for job_id in {t.job_id for t in tasks}:
                if job_id not in self._s.jobs:
                    raise ValueError(f"no job {job_id!r} for its tasks")
            ids = {t.id for t in tasks}
            keys = {(t.job_id, t.index) for t in tasks}
            held = {(t.job_id, t.index) for t in self._s.tasks.values()}
            if len(ids) < len(tasks) or ids & self._s.tasks.keys():
                raise Conflict("a task id is taken")
            if len(keys) < len(tasks) or keys & held:
                raise Conflict("a task index is taken")
            for task in tasks:
                self._s.tasks[task.id] = copy.deepcopy(task)
                self._s.job_tasks.setdefault(task.job_id, []).append(task.id)
            for job_id in {t.job_id for t in tasks}:
                self._s.job_tasks[job_id].sort(key=lambda i: self._s.tasks[i].index)

    def delete_tasks(self, job_id: str, start: int, stop: int) -> int:
        with self._lock:
            ids = self._s.job_tasks.get(job_id, [])
            gone = [i for i in ids if start <= self._s.tasks[i].index < stop]
            if any(a.task_id in gone for a in self._s.attempts.values()):
                raise ValueError(f"tasks of job {job_id} have attempts: they cannot go")
            for task_id in gone:
                del self._s.tasks[task_id]
            self._s.job_tasks[job_id] = [i for i in ids if i in self._s.tasks]
            return len(gone)

    def delete_job(self, job_id: str) -> None:
        with self._lock:
            if self._s.job_tasks.get(job_id):
                raise ValueError(f"job {job_id} still has tasks")
            self._s.jobs.pop(job_id, None)
            self._s.job_tasks.pop(job_id, None)

    def cancel_queued_tasks(self, job_id: str, start: int, stop: int) -> int:
        with self._lock:
            changed = 0
            for task_id in self._s.job_tasks.get(job_id, []):
                task = self._s.tasks[task_id]
                if start <= task.index < stop and task.state == TaskState.QUEUED:
                    task.state = TaskState.CANCELLED
                    changed += 1
            return changed

    def get_job(self, job_id: str) -> Job | None:
        with self._lock:
            return copy.deepcopy(self._s.jobs.get(job_id))

    def find_job(self, account_id: str, idempotency_key: str) -> Job | None:
        if not idempotency_key:
            return None
        with self._lock:
            for job in self._s.jobs.values():
                if job.account_id == account_id and job.idempotency_key == idempotency_key:
                    return copy.deepcopy(job)
            return None

    def list_jobs(
        self, account_id: str | None = None, states: list[JobState] | None = None, limit: int = 100
    ) -> list[Job]:
        with self._lock:
            jobs = [
                j
                for j in self._s.jobs.values()
                if (account_id is None or j.account_id == account_id)
                and (states is None or j.state in states)
            ]
            jobs.sort(key=lambda j: (j.created_at, j.id), reverse=True)
            return _copies(jobs[:limit])

    def update_job(self, job: Job) -> None:
        with self._lock:
            stored = self._s.jobs.get(job.id)
            if stored is not None:
                stored.state = job.state
                stored.cost_held = job.cost_held
                stored.cost_spent = job.cost_spent
                stored.error = job.error
                stored.finished_at = job.finished_at
                stored.tasks_succeeded = job.tasks_succeeded
                stored.tasks_failed = job.tasks_failed

    def task_counts(self, job_id: str) -> dict[TaskState, int]:
        with self._lock:
            counts = dict.fromkeys(TaskState, 0)
            for task_id in self._s.job_tasks.get(job_id, []):
                counts[self._s.tasks[task_id].state] += 1
            return counts

    def get_tasks(self, task_ids: list[str]) -> list[Task]:
        with self._lock:
            found = [self._s.tasks.get(i) for i in dict.fromkeys(task_ids)]
            return _copies([t for t in found if t is not None])

    def list_tasks(self, job_id: str, after_index: int = -1, limit: int = 1000) -> list[Task]:
        with self._lock:
            tasks = [self._s.tasks[i] for i in self._s.job_tasks.get(job_id, [])]
            return _copies([t for t in tasks if t.index > after_index][:limit])

    def queued_tasks(self) -> list[Task]:
        with self._lock:
            jobs = self._s.jobs
            queued = [t for t in self._s.tasks.values() if t.state == TaskState.QUEUED]
            queued.sort(key=lambda t: (jobs[t.job_id].created_at, t.job_id, t.index))
            return _copies(queued)

    def update_tasks(self, tasks: list[Task]) -> None:
        with self._lock:
            for task in tasks:
                stored = self._s.tasks.get(task.id)
                if stored is not None:
                    stored.state = task.state
                    stored.attempts = task.attempts
                    stored.node_id = task.node_id
                    stored.outputs = copy.deepcopy(task.outputs)
                    stored.receipt = task.receipt
                    stored.error = task.error

    def lease_tasks(self, attempts: list[Attempt]) -> list[Attempt]:
        with self._lock:
            leased: list[Attempt] = []
            won: set[str] = set()  # a task leased earlier in this batch is no longer queued
            for attempt in attempts:
                task = self._s.tasks.get(attempt.task_id)
                if task is not None and task.state == TaskState.QUEUED and task.id not in won:
                    won.add(task.id)
                    leased.append(attempt)
            ids = {a.id for a in leased}
            if len(ids) < len(leased) or ids & self._s.attempts.keys():
                raise Conflict("an attempt id is taken")
            for attempt in leased:
                task = self._s.tasks[attempt.task_id]
                task.state = TaskState.LEASED
                task.attempts += 1
                self._s.attempts[attempt.id] = copy.deepcopy(attempt)
            return _copies(leased)

    # attempts

    def get_attempts(self, attempt_ids: list[str]) -> list[Attempt]:
        with self._lock:
            found = [self._s.attempts.get(i) for i in dict.fromkeys(attempt_ids)]
            return _copies([a for a in found if a is not None])

    def running_attempts(self, node_id: str | None = None) -> list[Attempt]:
        with self._lock:
            running = [
                a
                for a in self._s.attempts.values()
                if a.state == AttemptState.RUNNING and (node_id is None or a.node_id == node_id)
            ]
            running.sort(key=lambda a: (a.created_at, a.id))
            return _copies(running)

    def expired_attempts(self, now: float, limit: int = 1000) -> list[Attempt]:
        with self._lock:
            expired = [
                a
                for a in self._s.attempts.values()
                if a.state == AttemptState.RUNNING and a.deadline < now
            ]
            expired.sort(key=lambda a: (a.deadline, a.id))
            return _copies(expired[:limit])

    def renew_leases(self, node_id: str, deadline: float, max_age: float) -> int:
        with self._lock:
            renewed = 0
            for a in self._s.attempts.values():
                if a.node_id == node_id and a.state == AttemptState.RUNNING:
                    a.deadline = min(deadline, a.created_at + max_age)
                    renewed += 1
            return renewed

    def shift_running(self, seconds: float) -> int:
        with self._lock:
            running = [a for a in self._s.attempts.values() if a.state == AttemptState.RUNNING]
            for a in running:
                a.created_at += seconds
                a.deadline += seconds
            return len(running)

    def update_attempts(self, attempts: list[Attempt]) -> None:
        with self._lock:
            for attempt in attempts:
                stored = self._s.attempts.get(attempt.id)
                if stored is not None:
                    stored.state = attempt.state
                    stored.deadline = attempt.deadline
                    stored.finished_at = attempt.finished_at
                    stored.error_code = attempt.error_code
                    stored.error = attempt.error
                    stored.claims = attempt.claims

    def failure_claims(self, job_ids: list[str]) -> list[tuple[Attempt, str]]:
        wanted, open_states = set(job_ids), (TaskState.QUEUED, TaskState.LEASED)
        with self._lock:
            found = [
                a
                for a in self._s.attempts.values()
                if a.claims and a.job_id in wanted and self._s.tasks[a.task_id].state in open_states
            ]
            found.sort(key=lambda a: (a.created_at, a.id))
            nodes = self._s.nodes
            return [
                (
                    copy.copy(a),
                    owner_of(nodes[a.node_id]) if a.node_id in nodes else f"node:{a.node_id}",
                )
                for a in found
            ]

    def clear_claims(self, job_id: str) -> None:
        with self._lock:
            for a in self._s.attempts.values():
                if a.job_id == job_id:
                    a.claims = NO_CLAIMS

    def node_failures(self, job_id: str) -> dict[str, int]:
        with self._lock:
            failures: dict[str, int] = {}
            for a in self._s.attempts.values():
                if a.job_id == job_id and a.state in FAILED_ATTEMPT_STATES:
                    failures[a.node_id] = failures.get(a.node_id, 0) + 1
            return failures

    # nodes

    def touch_nodes(self, seen: Mapping[str, float]) -> None:
        with self._lock:
            for node_id, when in seen.items():
                stored = self._s.nodes.get(node_id)
                if stored is not None:
                    stored.last_seen = max(stored.last_seen, when)

    def upsert_node(self, node: Node) -> None:
        with self._lock:
            stored = self._s.nodes.get(node.id)
            if stored is None:
                self._s.nodes[node.id] = copy.deepcopy(node)
                return
            stored.name = node.name
            stored.public_key = node.public_key
            stored.devices = copy.deepcopy(node.devices)
            stored.software = dict(node.software)
            stored.executors = dict(node.executors)
            stored.last_seen = node.last_seen
            stored.owner = node.owner

    def get_node(self, node_id: str) -> Node | None:
        with self._lock:
            return copy.deepcopy(self._s.nodes.get(node_id))

    def list_nodes(self) -> list[Node]:
        with self._lock:
            return _copies(sorted(self._s.nodes.values(), key=lambda n: n.id))

    def add_node_counts(self, node_id: str, succeeded: int, failed: int) -> None:
        with self._lock:
            stored = self._s.nodes.get(node_id)
            if stored is not None:
                stored.tasks_succeeded += succeeded
                stored.tasks_failed += failed

    # blobs

    def add_blob_owners(self, digests: list[str], account_id: str) -> None:
        with self._lock:
            self._s.blob_owners.update((d, account_id) for d in digests)

    def blob_owned(self, digest: str, account_id: str) -> bool:
        with self._lock:
            return (digest, account_id) in self._s.blob_owners

    def claim_meta(self, name: str, value: str) -> str:
        with self._lock:
            return self._s.meta.setdefault(name, value)

    def add_webhook(self, delivery: Delivery) -> None:
        with self._lock:
            self._s.webhooks[delivery.id] = copy.deepcopy(delivery)

    def due_webhooks(self, now: float, limit: int) -> list[Delivery]:
        with self._lock:
            due = [d for d in self._s.webhooks.values() if d.state == "pending"]
            due = [d for d in due if d.next_at <= now]
            return _copies(sorted(due, key=lambda d: d.next_at)[:limit])

    def update_webhook(self, delivery: Delivery) -> None:
        with self._lock:
            if delivery.id in self._s.webhooks:
                self._s.webhooks[delivery.id] = copy.deepcopy(delivery)

    def get_webhooks(self, job_id: str) -> list[Delivery]:
        with self._lock:
            found = [d for d in self._s.webhooks.values() if d.job_id == job_id]
            return _copies(sorted(found, key=lambda d: d.created_at))

    def add_uploads(self, uploads: list[tuple[str, str]]) -> None:
        with self._lock:
            self._s.uploads.update(uploads)

    def uploaded(self, attempt_id: str, digests: list[str]) -> set[str]:
        with self._lock:
            return {d for d in digests if (attempt_id, d) in self._s.uploads}

    def get_inline_blob(self, digest: str) -> bytes | None:
        with self._lock:
            return self._s.inline_blobs.get(digest)

    # events

    def add_events(self, events: list[Event]) -> None:
        with self._lock:
            for event in events:
                self._s.event_seq += 1
                self._s.events.append(dataclasses.replace(event, seq=self._s.event_seq))

    def list_events(
        self,
        after: int = 0,
        limit: int = 100,
        newest: bool = False,
        job_id: str = "",
        node_ids: list[str] | None = None,
        kinds: list[str] | None = None,
    ) -> list[Event]:
        with self._lock:
            nodes = set(node_ids) if node_ids is not None else None
            found = [
                e
                for e in self._s.events
                if e.seq > after
                and (not job_id or e.job_id == job_id)
                and (nodes is None or e.node_id in nodes)
                and (kinds is None or e.kind in kinds)
            ]
            return _copies(found[-limit:] if newest else found[:limit])

    def trim_events(self, keep: int) -> int:
        with self._lock:
            events = self._s.events
            gone = max(len(events) - max(keep, 0), 0)
            del events[:gone]
            return gone
