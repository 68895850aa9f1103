"""The store over SQL, written once for SQLite and PostgreSQL (see engine.Dialect)."""

import copy
from collections.abc import Mapping
from typing import Any

from sparegrid.coordinator.domain import (
    Account,
    Attempt,
    AttemptLog,
    AttemptState,
    Delivery,
    Dispute,
    Job,
    JobState,
    LedgerEntry,
    Node,
    Replica,
    Reputation,
    Task,
    TaskState,
    Transaction,
    node_account,
)
from sparegrid.coordinator.store import rows as r
from sparegrid.coordinator.store.base import Conflict, Posted
from sparegrid.coordinator.store.engine import CHUNK, chunks, marks
from sparegrid.coordinator.store.rules import FAILED_ATTEMPT_STATES, check_funds, net_changes
from sparegrid.coordinator.store.sql_events import SqlEvents
from sparegrid.coordinator.store.sql_invites import SqlInvites
from sparegrid.coordinator.store.sql_storage import SqlStorage

_RUNNING = AttemptState.RUNNING.value
_QUEUED = TaskState.QUEUED.value


def _prefix_filter(column: str, prefix: str) -> tuple[str, tuple[object, ...]]:
    """A condition matching values of column that start with prefix, case-sensitively."""
    return f"substr({column}, 1, CAST(? AS INTEGER)) = ?", (len(prefix), prefix)


class SqlStore(SqlStorage, SqlEvents, SqlInvites):
    """The Store over SQL; subclasses open the connection and pick the dialect. The
    storage bookkeeping (quotas, blob collection, idle nodes) is in sql_storage.py, the
    events in sql_events.py, the invitation codes in sql_invites.py."""

    # accounts

    def create_account(self, account: Account) -> None:
        with self._atomic():
            taken = self._query(
                "SELECT name FROM accounts WHERE name = ? OR key_hash = ? OR id = ?",
                (account.name, account.key_hash, account.id),
            )
            if taken:
                what = "name" if taken[0][0] == account.name else "id or API key"
                raise Conflict(f"account {what} of {account.name!r} is taken")
            with self._conflicts(f"account {account.name!r} is taken"):
                self._run(
                    f"INSERT INTO accounts ({r.ACCOUNT_COLUMNS})"
                    f" VALUES ({r.placeholders(r.ACCOUNT_COLUMNS)})",
                    r.account_params(account),
                )

    def get_account(self, account_id: str) -> Account | None:
        return self._account_where("id = ?", account_id)

    def get_account_by_name(self, name: str) -> Account | None:
        return self._account_where("name = ?", name)

    def get_account_by_key_hash(self, key_hash: str) -> Account | None:
        return self._account_where("key_hash = ?", key_hash)

    def _account_where(self, condition: str, value: str) -> Account | None:
        with self._atomic():
            rows = self._query(
                f"SELECT {r.ACCOUNT_COLUMNS} FROM accounts WHERE {condition}", (value,)
            )
        return r.account_from(rows[0]) if rows else None

    def list_accounts(self) -> list[Account]:
        with self._atomic():
            rows = self._query(f"SELECT {r.ACCOUNT_COLUMNS} FROM accounts ORDER BY name")
        return [r.account_from(row) for row in rows]

    def update_account(self, account: Account) -> None:
        with self.transaction():
            self._run(
                "UPDATE accounts SET key_hash = ?, is_admin = ?, disabled = ? WHERE id = ?",
                (account.key_hash, account.is_admin, account.disabled, account.id),
            )

    # ledger

    def post(self, txn: Transaction) -> bool:
        return self.post_many([txn]).new[0]

    def post_many(self, txns: list[Transaction]) -> Posted:
        changes = [net_changes(txn) for txn in txns]
        accounts = list(dict.fromkeys(a for change in changes for a in change))
        with self._atomic():
            taken, balances = self._keys_and_balances(
                [txn.idempotency_key for txn in txns], accounts
            )
            fresh: list[Transaction] = []
            new: list[bool] = []
            total: dict[str, int] = {}
            for txn, change in zip(txns, changes, strict=True):
                new.append(txn.idempotency_key not in taken)
                if not new[-1]:
                    continue
                taken.add(txn.idempotency_key)
                fresh.append(txn)
                for account, amount in change.items():
                    total[account] = total.get(account, 0) + amount
            if fresh:
                check_funds(total, balances)
                self._append(fresh, total)
        after = {a: balances.get(a, 0) + total.get(a, 0) for a in accounts}
        return Posted(new, after)

    def _keys_and_balances(
        self, keys: list[str], accounts: list[str]
    ) -> tuple[set[str], dict[str, int]]:
        """The idempotency keys taken among `keys`, and the balances of the accounts, their
        rows locked until the transaction ends; a few of each in one round trip. The rows
        are locked first: a coordinator posting the same key meanwhile has committed by
        the time the keys are read."""
        if not keys or not accounts or len(keys) > CHUNK or len(accounts) > CHUNK:
            balances = self._locked_balances(accounts)
            found = self._query_in(
                "SELECT idempotency_key FROM transactions WHERE idempotency_key IN (*)", keys
            )
            return {row[0] for row in found}, balances
        locked, found = self._queries(
            [
                (
                    f"SELECT account, balance FROM balances WHERE account IN"
                    f" ({marks(len(accounts))})" + self._dialect.lock_rows,
                    accounts,
                ),
                (
                    "SELECT idempotency_key FROM transactions WHERE idempotency_key IN"
                    f" ({marks(len(keys))})",
                    keys,
                ),
            ]
        )
        return {row[0] for row in found}, {a: int(b) for a, b in locked}

    def _append(self, txns: list[Transaction], total: dict[str, int]) -> None:
        with self._conflicts("a transaction id is taken", lazy=True):
            self._run_many(
                "INSERT INTO transactions (id, idempotency_key, reason, job_id, task_id,"
                " created_at) VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (t.id, t.idempotency_key, t.reason, t.job_id, t.task_id, t.created_at)
                    for t in txns
                ],
            )
        self._run_many(
            f"INSERT INTO entries ({r.ENTRY_COLUMNS}) VALUES ({r.placeholders(r.ENTRY_COLUMNS)})",
            [r.entry_params(t, p) for t in txns for p in t.postings],
        )
        self._run_many(
            "INSERT INTO balances (account, balance) VALUES (?, ?) ON CONFLICT (account)"
            " DO UPDATE SET balance = balances.balance + excluded.balance",
            list(total.items()),
        )

    def _locked_balances(self, accounts: list[str]) -> dict[str, int]:
        """Balances of the accounts, their rows locked until the transaction ends."""
        rows = self._query_in(
            "SELECT account, balance FROM balances WHERE account IN (*)" + self._dialect.lock_rows,
            accounts,
        )
        return {account: int(balance) for account, balance in rows}

    def balance(self, account: str) -> int:
        with self._atomic():
            rows = self._query("SELECT balance FROM balances WHERE account = ?", (account,))
        return int(rows[0][0]) if rows else 0

    def balances(self, prefix: str = "") -> dict[str, int]:
        condition, params = _prefix_filter("account", prefix)
        with self._atomic():
            rows = self._query(f"SELECT account, balance FROM balances WHERE {condition}", params)
        return {account: int(balance) for account, balance in rows}

    def ledger_entries(
        self, account: str = "", job_id: str = "", limit: int = 100
    ) -> list[LedgerEntry]:
        conditions, params = ["1 = 1"], list[object]()
        for column, value in (("account", account), ("job_id", job_id)):
            if value:
                conditions.append(f"{column} = ?")
                params.append(value)
        with self._atomic():
            rows = self._query(
                f"SELECT {r.ENTRY_COLUMNS} FROM entries WHERE {' AND '.join(conditions)}"
                " ORDER BY created_at DESC, seq DESC LIMIT ?",
                (*params, limit),
            )
        return [r.entry_from(row) for row in rows]

    def ledger_totals(self) -> tuple[int, int, int]:
        with self._atomic():
            ((txns, entries, total),) = self._query(
                "SELECT (SELECT COUNT(*) FROM transactions), COUNT(*), COALESCE(SUM(amount), 0)"
                " FROM entries"
            )
        return int(txns), int(entries), int(total)

    def unbalanced_transactions(self) -> list[tuple[str, int]]:
        with self._atomic():
            rows = self._query(
                "SELECT transaction_id, SUM(amount) FROM entries GROUP BY transaction_id"
                " HAVING SUM(amount) <> 0 ORDER BY transaction_id"
            )
        return [(txn_id, int(total)) for txn_id, total in rows]

    def computed_balances(self) -> dict[str, int]:
        with self._atomic():
            rows = self._query("SELECT account, SUM(amount) FROM entries GROUP BY account")
        return {account: int(total) for account, total in rows}

    def payments_by_job(self) -> dict[str, int]:
        condition, params = _prefix_filter("account", node_account(""))
        with self._atomic():
            rows = self._query(
                f"SELECT job_id, SUM(amount) FROM entries WHERE job_id <> '' AND {condition}"
                " GROUP BY job_id",
                params,
            )
        return {job_id: int(total) for job_id, total in rows}

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

    def update_attempts(self, attempts: list[Attempt]) -> None:
        with self._atomic():
            self._run_many(
                "UPDATE attempts SET state = ?, deadline = ?, finished_at = ?, error_code = ?,"
                " error = ? WHERE id = ?",
                [
                    (a.state.value, a.deadline, a.finished_at, a.error_code, a.error, a.id)
                    for a in attempts
                ],
            )

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

    def claim_meta(self, name: str, value: str) -> str:
        with self._atomic():
            self._run(
                "INSERT INTO meta (name, value) VALUES (?, ?) ON CONFLICT (name) DO NOTHING",
                (name, value),
            )
            rows = self._query("SELECT value FROM meta WHERE name = ?", (name,))
        return str(rows[0][0])

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
                "UPDATE webhooks SET attempts = ?, next_at = ?, state = ?, last_error = ?"
                " WHERE id = ?",
                (
                    delivery.attempts,
                    delivery.next_at,
                    delivery.state,
                    delivery.last_error,
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
