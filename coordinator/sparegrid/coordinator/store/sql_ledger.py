"""The SQL store's accounts and its double-entry ledger: postings, balances, their checks."""

from sparegrid.coordinator.domain import Account, LedgerEntry, Transaction, node_account
from sparegrid.coordinator.store import rows as r
from sparegrid.coordinator.store.base import Conflict, Posted
from sparegrid.coordinator.store.engine import CHUNK, SqlEngine, marks
from sparegrid.coordinator.store.rules import check_funds, net_changes


def _prefix_filter(column: str, prefix: str) -> tuple[str, tuple[object, ...]]:
    """A condition matching values of column that start with prefix, case-sensitively."""
    return f"substr({column}, 1, CAST(? AS INTEGER)) = ?", (len(prefix), prefix)


class SqlLedger(SqlEngine):
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
