"""The in-memory store's replicas, reputations, disputes and attempt logs, as
sql_results.py keeps them."""

import copy
import threading

from sparegrid.coordinator.domain import AttemptLog, Dispute, Replica, Reputation
from sparegrid.coordinator.store.base import Conflict
from sparegrid.coordinator.store.memory_state import _copies, _State


class MemoryResults:
    _lock: threading.RLock
    _s: _State

    # verification

    def add_replicas(self, replicas: list[Replica]) -> None:
        with self._lock:
            ids = [p.attempt_id for p in replicas]
            if len(set(ids)) < len(ids) or set(ids) & self._s.replicas.keys():
                raise Conflict("an attempt holds a replica already")
            for replica in replicas:
                self._s.replicas[replica.attempt_id] = copy.deepcopy(replica)

    def update_replicas(self, replicas: list[Replica]) -> None:
        with self._lock:
            for replica in replicas:
                stored = self._s.replicas.get(replica.attempt_id)
                if stored is not None:
                    stored.state = replica.state

    def get_replicas(self, task_ids: list[str]) -> list[Replica]:
        wanted = set(task_ids)
        with self._lock:
            found = [p for p in self._s.replicas.values() if p.task_id in wanted]
            found.sort(key=lambda p: (p.created_at, p.attempt_id))
            return _copies(found)

    def get_reputations(self, node_ids: list[str] | None = None) -> list[Reputation]:
        with self._lock:
            reps = self._s.reputations
            ids = reps.keys() if node_ids is None else set(node_ids) & reps.keys()
            return _copies([reps[i] for i in sorted(ids)])

    def put_reputations(self, reputations: list[Reputation]) -> None:
        with self._lock:
            for reputation in reputations:
                self._s.reputations[reputation.node_id] = copy.deepcopy(reputation)

    def put_disputes(self, disputes: list[Dispute]) -> None:
        with self._lock:
            for dispute in disputes:
                self._s.disputes[dispute.task_id] = copy.deepcopy(dispute)

    def get_disputes(self, job_id: str, limit: int = 100) -> list[Dispute]:
        with self._lock:
            found = [d for d in self._s.disputes.values() if d.job_id == job_id]
            return _copies(sorted(found, key=lambda d: d.task_index)[:limit])

    # task logs

    def add_task_logs(self, logs: list[AttemptLog]) -> None:
        with self._lock:
            for log in logs:
                self._s.task_logs.setdefault(log.attempt_id, copy.deepcopy(log))

    def task_log_count(self, job_id: str) -> int:
        with self._lock:
            return sum(1 for log in self._s.task_logs.values() if log.job_id == job_id)

    def task_logs(
        self, job_id: str, task_index: int | None = None, offset: int = 0, limit: int = 0
    ) -> list[AttemptLog]:
        with self._lock:
            found = [
                log
                for log in self._s.task_logs.values()
                if log.job_id == job_id and task_index in (None, log.task_index)
            ]
            found.sort(key=lambda log: (log.task_index, log.received_at, log.attempt_id))
            return _copies(found[offset : offset + limit] if limit else found[offset:])
