"""The SQL store's records of finished attempts: replicas and what checking them leaves
(reputations, disputes), and the attempts' logs."""

from sparegrid.coordinator.domain import AttemptLog, Dispute, Replica, Reputation
from sparegrid.coordinator.store import rows as r
from sparegrid.coordinator.store.engine import SqlEngine


class SqlResults(SqlEngine):
    # verification

    def add_replicas(self, replicas: list[Replica]) -> None:
        # settlement takes one result per attempt (Intake skips one settled before)
        with self._atomic(), self._conflicts("an attempt holds a replica already", lazy=True):
            self._run_many(
                f"INSERT INTO replicas ({r.REPLICA_COLUMNS})"
                f" VALUES ({r.placeholders(r.REPLICA_COLUMNS)})",
                [r.replica_params(p) for p in replicas],
            )

    def update_replicas(self, replicas: list[Replica]) -> None:
        with self._atomic():
            self._run_many(
                "UPDATE replicas SET state = ? WHERE attempt_id = ?",
                [(p.state.value, p.attempt_id) for p in replicas],
            )

    def get_replicas(self, task_ids: list[str]) -> list[Replica]:
        with self._atomic():
            rows = self._query_in(
                f"SELECT {r.REPLICA_COLUMNS} FROM replicas WHERE task_id IN (*)",
                list(dict.fromkeys(task_ids)),
            )
        found = [r.replica_from(row) for row in rows]
        return sorted(found, key=lambda p: (p.created_at, p.attempt_id))

    def get_reputations(self, node_ids: list[str] | None = None) -> list[Reputation]:
        with self._atomic():
            select = f"SELECT {r.REPUTATION_COLUMNS} FROM reputations"
            if node_ids is None:
                rows = self._query(select)
            else:
                rows = self._query_in(select + " WHERE node_id IN (*)", list(set(node_ids)))
        return sorted((r.reputation_from(row) for row in rows), key=lambda p: p.node_id)

    def put_reputations(self, reputations: list[Reputation]) -> None:
        columns = r.REPUTATION_COLUMNS.split(", ")
        updates = ", ".join(f"{c} = excluded.{c}" for c in columns[1:])
        with self._atomic():
            self._run_many(
                f"INSERT INTO reputations ({r.REPUTATION_COLUMNS})"
                f" VALUES ({r.placeholders(r.REPUTATION_COLUMNS)})"
                f" ON CONFLICT (node_id) DO UPDATE SET {updates}",
                [r.reputation_params(p) for p in reputations],
            )

    def put_disputes(self, disputes: list[Dispute]) -> None:
        columns = r.DISPUTE_COLUMNS.split(", ")
        updates = ", ".join(f"{c} = excluded.{c}" for c in columns[1:] if c != "created_at")
        with self._atomic():
            self._run_many(
                f"INSERT INTO disputes ({r.DISPUTE_COLUMNS})"
                f" VALUES ({r.placeholders(r.DISPUTE_COLUMNS)})"
                f" ON CONFLICT (task_id) DO UPDATE SET {updates}",
                [r.dispute_params(d) for d in disputes],
            )

    def get_disputes(self, job_id: str, limit: int = 100) -> list[Dispute]:
        with self._atomic():
            rows = self._query(
                f"SELECT {r.DISPUTE_COLUMNS} FROM disputes WHERE job_id = ?"
                " ORDER BY task_index LIMIT ?",
                (job_id, limit),
            )
        return [r.dispute_from(row) for row in rows]

    # task logs

    def add_task_logs(self, logs: list[AttemptLog]) -> None:
        if not logs:
            return
        with self.transaction():
            self._run_many(
                f"INSERT INTO task_logs ({r.TASK_LOG_COLUMNS})"
                f" VALUES ({r.placeholders(r.TASK_LOG_COLUMNS)})"
                " ON CONFLICT (attempt_id) DO NOTHING",
                [r.task_log_params(log) for log in logs],
            )

    def task_log_count(self, job_id: str) -> int:
        with self._atomic():
            rows = self._query("SELECT COUNT(*) FROM task_logs WHERE job_id = ?", (job_id,))
        return int(rows[0][0])

    def task_logs(
        self, job_id: str, task_index: int | None = None, offset: int = 0, limit: int = 0
    ) -> list[AttemptLog]:
        where, params = "job_id = ?", list[object]([job_id])
        if task_index is not None:
            where, params = "job_id = ? AND task_index = ?", [job_id, task_index]
        page = " LIMIT ? OFFSET ?" if limit else ""
        params += [limit, offset] if limit else []
        with self._atomic():
            rows = self._query(
                f"SELECT {r.TASK_LOG_COLUMNS} FROM task_logs WHERE {where}"
                " ORDER BY task_index, received_at, attempt_id" + page,
                params,
            )
        return [r.task_log_from(row) for row in rows]
