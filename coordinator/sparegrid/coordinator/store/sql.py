"""The store over SQL, written once for SQLite and PostgreSQL (see engine.Dialect)."""

import copy
from collections.abc import Mapping
from typing import Any

from sparegrid.coordinator.domain import (
    Attempt,
    AttemptState,
    Delivery,
    Job,
    JobState,
    Node,
    Task,
    TaskState,
)
from sparegrid.coordinator.store import rows as r
from sparegrid.coordinator.store.base import Conflict
from sparegrid.coordinator.store.engine import chunks, marks
from sparegrid.coordinator.store.rules import FAILED_ATTEMPT_STATES
from sparegrid.coordinator.store.sql_events import SqlEvents
from sparegrid.coordinator.store.sql_invites import SqlInvites
from sparegrid.coordinator.store.sql_ledger import SqlLedger
from sparegrid.coordinator.store.sql_results import SqlResults
from sparegrid.coordinator.store.sql_storage import SqlStorage

_RUNNING = AttemptState.RUNNING.value
_QUEUED = TaskState.QUEUED.value


class SqlStore(SqlLedger, SqlResults, SqlStorage, SqlEvents, SqlInvites):
    """The Store over SQL; subclasses open the connection and pick the dialect. The
    accounts and the ledger are in sql_ledger.py, the replicas, reputations, disputes and
    attempt logs in sql_results.py, the storage bookkeeping (quotas, blob collection, idle
    nodes) in sql_storage.py, the events in sql_events.py, the invitation codes in
    sql_invites.py."""

    # jobs and tasks

    def create_job(self, job: Job, tasks: list[Task]) -> None:
        if any(t.job_id != job.id for t in tasks):
            raise ValueError(f"every task of job {job.id} must carry its job id")
        with self._atomic():
            if self.get_job(job.id) is not None:
                raise Conflict(f"job id {job.id!r} is taken")
            if job.idempotency_key and self.find_job(job.account_id, job.idempotency_key):
                raise Conflict(f"a job with idempotency key {job.idempotency_key!r} exists")
            with self._conflicts(f"job {job.id}: a task id or task index is taken"):
                self._run(
                    f"INSERT INTO jobs ({r.JOB_COLUMNS}) VALUES ({r.placeholders(r.JOB_COLUMNS)})",
                    r.job_params(job),
                )
                self._insert_tasks(tasks)

    def add_tasks(self, tasks: list[Task]) -> None:
        with self._atomic(), self._conflicts("a task id or task index is taken"):
            self._insert_tasks(tasks)

    def _insert_tasks(self, tasks: list[Task]) -> None:
        """Inserts task rows; a dialect may do it faster (PostgreSQL: COPY)."""
        self._run_many(
            f"INSERT INTO tasks ({r.TASK_COLUMNS}) VALUES ({r.placeholders(r.TASK_COLUMNS)})",
            [r.task_params(t) for t in tasks],
        )

    def delete_tasks(self, job_id: str, start: int, stop: int) -> int:
        with self._atomic():
            return self._count(
                "DELETE FROM tasks WHERE job_id = ? AND idx >= ? AND idx < ?",
                (job_id, start, stop),
            )

    def delete_job(self, job_id: str) -> None:
        with self._atomic():
            self._run("DELETE FROM jobs WHERE id = ?", (job_id,))

    def cancel_queued_tasks(self, job_id: str, start: int, stop: int) -> int:
        with self._atomic():
            return self._count(
                "UPDATE tasks SET state = ? WHERE job_id = ? AND idx >= ? AND idx < ?"
                " AND state = ?",
                (TaskState.CANCELLED.value, job_id, start, stop, _QUEUED),
            )

    def get_job(self, job_id: str) -> Job | None:
        return self._job_where("id = ?", (job_id,))

    def find_job(self, account_id: str, idempotency_key: str) -> Job | None:
        if not idempotency_key:
            return None
        return self._job_where(
            "account_id = ? AND idempotency_key = ?", (account_id, idempotency_key)
        )

    def _job_where(self, condition: str, params: tuple[str, ...]) -> Job | None:
        with self._atomic():
            rows = self._query(f"SELECT {r.JOB_COLUMNS} FROM jobs WHERE {condition}", params)
        return r.job_from(rows[0]) if rows else None

    def list_jobs(
        self, account_id: str | None = None, states: list[JobState] | None = None, limit: int = 100
    ) -> list[Job]:
        if states is not None and not states:
            return []
        conditions, params = ["1 = 1"], list[object]()
        if account_id is not None:
            conditions.append("account_id = ?")
            params.append(account_id)
        if states is not None:
            conditions.append(f"state IN ({marks(len(states))})")
            params += [s.value for s in states]
        with self._atomic():
            rows = self._query(
                f"SELECT {r.JOB_COLUMNS} FROM jobs WHERE {' AND '.join(conditions)}"
                " ORDER BY created_at DESC, id DESC LIMIT ?",
                (*params, limit),
            )
        return [r.job_from(row) for row in rows]

    def update_job(self, job: Job) -> None:
        with self._atomic():
            self._run(
                "UPDATE jobs SET state = ?, cost_held = ?, cost_spent = ?, error = ?,"
                " finished_at = ?, tasks_succeeded = ?, tasks_failed = ? WHERE id = ?",
                (
                    job.state.value,
                    job.cost_held,
                    job.cost_spent,
                    job.error,
                    job.finished_at,
                    job.tasks_succeeded,
                    job.tasks_failed,
                    job.id,
                ),
            )

    def task_counts(self, job_id: str) -> dict[TaskState, int]:
        with self._atomic():
            rows = self._query(
                "SELECT state, COUNT(*) FROM tasks WHERE job_id = ? GROUP BY state", (job_id,)
            )
        counts = dict.fromkeys(TaskState, 0)
        counts.update({TaskState(state): int(n) for state, n in rows})
        return counts

    def get_tasks(self, task_ids: list[str]) -> list[Task]:
        with self._atomic():
            rows = self._query_in(
                f"SELECT {r.TASK_COLUMNS} FROM tasks WHERE id IN (*)", list(dict.fromkeys(task_ids))
            )
        return [r.task_from(row) for row in rows]

    def list_tasks(self, job_id: str, after_index: int = -1, limit: int = 1000) -> list[Task]:
        with self._atomic():
            rows = self._query(
                f"SELECT {r.TASK_COLUMNS} FROM tasks WHERE job_id = ? AND idx > ?"
                " ORDER BY idx LIMIT ?",
                (job_id, after_index, limit),
            )
        return [r.task_from(row) for row in rows]

    def queued_tasks(self) -> list[Task]:
        columns = ", ".join(f"t.{c.strip()}" for c in r.TASK_COLUMNS.split(","))
        with self._atomic():
            rows = self._query(
                f"SELECT {columns} FROM tasks t JOIN jobs j ON j.id = t.job_id"
                " WHERE t.state = ? ORDER BY j.created_at, j.id, t.idx",
                (_QUEUED,),
            )
        return [r.task_from(row) for row in rows]

    def update_tasks(self, tasks: list[Task]) -> None:
        with self._atomic():
            self._run_many(
                "UPDATE tasks SET state = ?, attempts = ?, node_id = ?, outputs = ?, receipt = ?,"
                " error = ? WHERE id = ?",
                [r.task_update_params(t) for t in tasks],
            )

    def lease_tasks(self, attempts: list[Attempt]) -> list[Attempt]:
        # an attempt's id is random: a violation would be a bug, which dooms a caller's
        # transaction (lazy) rather than cost a round trip to tell it apart
        with self._atomic(), self._conflicts("an attempt id is taken", lazy=True):
            queued = self._lease_queued(list(dict.fromkeys(a.task_id for a in attempts)))
            leased: list[Attempt] = []
            for attempt in attempts:
                if attempt.task_id in queued:
                    queued.discard(attempt.task_id)  # one attempt per task
                    leased.append(attempt)
            self._run_many(
                f"INSERT INTO attempts ({r.ATTEMPT_COLUMNS})"
                f" VALUES ({r.placeholders(r.ATTEMPT_COLUMNS)})",
                [r.attempt_params(a) for a in leased],
            )
        return [copy.copy(a) for a in leased]  # an Attempt holds immutable values only

    def _lease_queued(self, task_ids: list[str]) -> set[str]:
        """Leases the tasks that are queued, counting an attempt; returns their ids."""
        leased: set[str] = set()
        for chunk in chunks(task_ids):
            rows = self._query(
                "UPDATE tasks SET state = ?, attempts = attempts + 1"
                f" WHERE state = ? AND id IN ({marks(len(chunk))}) RETURNING id",
                (TaskState.LEASED.value, _QUEUED, *chunk),
            )
            leased.update(task_id for (task_id,) in rows)
        return leased

    # attempts

    def get_attempts(self, attempt_ids: list[str]) -> list[Attempt]:
        with self._atomic():
            rows = self._query_in(
                f"SELECT {r.ATTEMPT_COLUMNS} FROM attempts WHERE id IN (*)",
                list(dict.fromkeys(attempt_ids)),
            )
        return [r.attempt_from(row) for row in rows]

    def running_attempts(self, node_id: str | None = None) -> list[Attempt]:
        condition, params = "state = ?", [_RUNNING]
        if node_id is not None:
            condition, params = "node_id = ? AND state = ?", [node_id, _RUNNING]
        return self._attempts_where(condition, params, "created_at, id")

    def expired_attempts(self, now: float, limit: int = 1000) -> list[Attempt]:
        return self._attempts_where(
            "state = ? AND deadline < ?", [_RUNNING, now], f"deadline, id LIMIT {int(limit)}"
        )

    def _attempts_where(self, condition: str, params: list[Any], order: str) -> list[Attempt]:
        with self._atomic():
            rows = self._query(
                f"SELECT {r.ATTEMPT_COLUMNS} FROM attempts WHERE {condition} ORDER BY {order}",
                params,
            )
        return [r.attempt_from(row) for row in rows]

    def renew_leases(self, node_id: str, deadline: float, max_age: float) -> int:
        with self._atomic():
            return self._count(
                "UPDATE attempts SET deadline = CASE WHEN created_at + ? < ?"
                " THEN created_at + ? ELSE ? END WHERE node_id = ? AND state = ?",
                (max_age, deadline, max_age, deadline, node_id, _RUNNING),
            )

    def shift_running(self, seconds: float) -> int:
        with self._atomic():
            return self._count(
                "UPDATE attempts SET created_at = created_at + ?, deadline = deadline + ?"
                " WHERE state = ?",
                (seconds, seconds, _RUNNING),
            )

    def update_attempts(self, attempts: list[Attempt]) -> None:
        with self._atomic():
            self._run_many(
                "UPDATE attempts SET state = ?, deadline = ?, finished_at = ?, error_code = ?,"
                " error = ?, claims = ? WHERE id = ?",
                [
                    (
                        a.state.value,
                        a.deadline,
                        a.finished_at,
                        a.error_code,
                        a.error,
                        int(a.claims),
                        a.id,
                    )
                    for a in attempts
                ],
            )

    def failure_claims(self, job_ids: list[str]) -> list[tuple[Attempt, str]]:
        open_states = (TaskState.QUEUED.value, TaskState.LEASED.value)
        columns = ", ".join(f"a.{c.strip()}" for c in r.ATTEMPT_COLUMNS.split(","))
        with self._atomic():
            rows = self._query_in(
                f"SELECT {columns}, n.owner FROM attempts a JOIN tasks t ON t.id = a.task_id"
                " LEFT JOIN nodes n ON n.id = a.node_id"
                " WHERE a.claims <> 0 AND t.state IN (?, ?) AND a.job_id IN (*)",
                list(dict.fromkeys(job_ids)),
                open_states,
            )
        found = [(r.attempt_from(row), row[-1] or f"node:{row[3]}") for row in rows]
        return sorted(found, key=lambda pair: (pair[0].created_at, pair[0].id))

    def clear_claims(self, job_id: str) -> None:
        with self._atomic():
            self._run("UPDATE attempts SET claims = 0 WHERE job_id = ? AND claims <> 0", (job_id,))

    def node_failures(self, job_id: str) -> dict[str, int]:
        states = [s.value for s in FAILED_ATTEMPT_STATES]
        with self._atomic():
            rows = self._query(
                f"SELECT node_id, COUNT(*) FROM attempts WHERE job_id = ?"
                f" AND state IN ({marks(len(states))}) GROUP BY node_id",
                (job_id, *states),
            )
        return {node_id: int(n) for node_id, n in rows}

    # nodes

    def upsert_node(self, node: Node) -> None:
        kept = ("name", "public_key", "devices", "software", "executors", "last_seen", "owner")
        with self._atomic():
            self._run(
                f"INSERT INTO nodes ({r.NODE_COLUMNS}) VALUES ({r.placeholders(r.NODE_COLUMNS)})"
                " ON CONFLICT (id) DO UPDATE SET " + ", ".join(f"{c} = excluded.{c}" for c in kept),
                r.node_params(node),
            )

    def touch_nodes(self, seen: Mapping[str, float]) -> None:
        rows = [(when, node_id, when) for node_id, when in seen.items()]
        with self.transaction():
            self._run_many("UPDATE nodes SET last_seen = ? WHERE id = ? AND last_seen < ?", rows)

    def get_node(self, node_id: str) -> Node | None:
        nodes = self._nodes_where("id = ?", (node_id,))
        return nodes[0] if nodes else None

    def list_nodes(self) -> list[Node]:
        return self._nodes_where("1 = 1", ())

    def _nodes_where(self, condition: str, params: tuple[str, ...]) -> list[Node]:
        with self._atomic():
            rows = self._query(
                f"SELECT {r.NODE_COLUMNS} FROM nodes WHERE {condition} ORDER BY id", params
            )
        return [r.node_from(row) for row in rows]

    def add_node_counts(self, node_id: str, succeeded: int, failed: int) -> None:
        with self._atomic():
            self._run(
                "UPDATE nodes SET tasks_succeeded = tasks_succeeded + ?,"
                " tasks_failed = tasks_failed + ? WHERE id = ?",
                (succeeded, failed, node_id),
            )

    # meta

    def claim_meta(self, name: str, value: str) -> str:
        with self._atomic():
            self._run(
                "INSERT INTO meta (name, value) VALUES (?, ?) ON CONFLICT (name) DO NOTHING",
                (name, value),
            )
            rows = self._query("SELECT value FROM meta WHERE name = ?", (name,))
        return str(rows[0][0])

    # webhooks

    def add_webhook(self, delivery: Delivery) -> None:
        with self.transaction():
            self._run(
                f"INSERT INTO webhooks ({r.WEBHOOK_COLUMNS})"
                f" VALUES ({r.placeholders(r.WEBHOOK_COLUMNS)})",
                r.webhook_params(delivery),
            )

    def due_webhooks(self, now: float, limit: int) -> list[Delivery]:
        with self.transaction():
            rows = self._query(
                f"SELECT {r.WEBHOOK_COLUMNS} FROM webhooks WHERE state = 'pending'"
                " AND next_at <= ? ORDER BY next_at LIMIT ?",
                (now, limit),
            )
        return [r.webhook_from(row) for row in rows]

    def update_webhook(self, delivery: Delivery) -> None:
        with self.transaction():
            self._run(
                "UPDATE webhooks SET attempts = ?, next_at = ?, state = ?, last_error = ?,"
                " tried_at = ? WHERE id = ?",
                (
                    delivery.attempts,
                    delivery.next_at,
                    delivery.state,
                    delivery.last_error,
                    delivery.tried_at,
                    delivery.id,
                ),
            )

    def get_webhooks(self, job_id: str) -> list[Delivery]:
        with self.transaction():
            rows = self._query(
                f"SELECT {r.WEBHOOK_COLUMNS} FROM webhooks WHERE job_id = ? ORDER BY created_at",
                (job_id,),
            )
        return [r.webhook_from(row) for row in rows]

    # blobs

    def add_blob_owners(self, digests: list[str], account_id: str) -> None:
        with self._atomic():
            self._run_many(
                "INSERT INTO blob_owners (digest, account_id) VALUES (?, ?)"
                " ON CONFLICT (digest, account_id) DO NOTHING",
                [(d, account_id) for d in digests],
            )

    def blob_owned(self, digest: str, account_id: str) -> bool:
        with self._atomic():
            rows = self._query(
                "SELECT 1 FROM blob_owners WHERE digest = ? AND account_id = ?",
                (digest, account_id),
            )
        return bool(rows)

    def add_uploads(self, uploads: list[tuple[str, str]]) -> None:
        with self._atomic():
            self._run_many(
                "INSERT INTO uploads (attempt_id, digest) VALUES (?, ?)"
                " ON CONFLICT (attempt_id, digest) DO NOTHING",
                uploads,
            )

    def uploaded(self, attempt_id: str, digests: list[str]) -> set[str]:
        if not digests:
            return set()
        with self._atomic():
            rows = self._query("SELECT digest FROM uploads WHERE attempt_id = ?", (attempt_id,))
        wanted = set(digests)
        return {row[0] for row in rows if row[0] in wanted}

    def get_inline_blob(self, digest: str) -> bytes | None:
        with self._atomic():
            rows = self._query("SELECT data FROM inline_blobs WHERE digest = ?", (digest,))
        return bytes(rows[0][0]) if rows else None
