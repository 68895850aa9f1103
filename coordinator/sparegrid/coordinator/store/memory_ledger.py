"""The in-memory store's accounts and its double-entry ledger, as sql_ledger.py keeps them."""

import copy
import threading
from collections.abc import Callable

from sparegrid.coordinator.domain import Account, LedgerEntry, Transaction, node_account
from sparegrid.coordinator.store.base import Conflict, Posted
from sparegrid.coordinator.store.memory_state import _copies, _State
from sparegrid.coordinator.store.rules import check_funds, net_changes

_AccountMatch = Callable[[Account], bool]
_EntryKey = Callable[[LedgerEntry], str]


class MemoryLedger:
    _lock: threading.RLock
    _s: _State

    # accounts

    def create_account(self, account: Account) -> None:
        with self._lock:
            for other in self._s.accounts.values():
                if account.name == other.name:
                    raise Conflict(f"account name {account.name!r} is taken")
                if account.key_hash == other.key_hash:
                    raise Conflict("an account with this API key exists")
            if account.id in self._s.accounts:
                raise Conflict(f"account id {account.id!r} is taken")
            self._s.accounts[account.id] = copy.deepcopy(account)

    def get_account(self, account_id: str) -> Account | None:
        with self._lock:
            return copy.deepcopy(self._s.accounts.get(account_id))

    def get_account_by_name(self, name: str) -> Account | None:
        return self._find_account(lambda a: a.name == name)

    def get_account_by_key_hash(self, key_hash: str) -> Account | None:
        return self._find_account(lambda a: a.key_hash == key_hash)

    def _find_account(self, match: _AccountMatch) -> Account | None:
        with self._lock:
            found = [a for a in self._s.accounts.values() if match(a)]
            return copy.deepcopy(found[0]) if found else None

    def list_accounts(self) -> list[Account]:
        with self._lock:
            return _copies(sorted(self._s.accounts.values(), key=lambda a: a.name))

    def update_account(self, account: Account) -> None:
        with self._lock:
            if account.id in self._s.accounts:
                self._s.accounts[account.id] = copy.deepcopy(account)

    # ledger

    def post(self, txn: Transaction) -> bool:
        return self.post_many([txn]).new[0]

    def post_many(self, txns: list[Transaction]) -> Posted:
        with self._lock:
            fresh: list[Transaction] = []
            new: list[bool] = []
            keys = set(self._s.ledger_keys)
            total: dict[str, int] = {}
            for txn in txns:
                changes = net_changes(txn)
                new.append(txn.idempotency_key not in keys)
                if not new[-1]:
                    continue
                if txn.id in self._s.ledger_ids:
                    raise Conflict(f"transaction id {txn.id!r} is taken")
                keys.add(txn.idempotency_key)
                fresh.append(txn)
                for account, change in changes.items():
                    total[account] = total.get(account, 0) + change
            check_funds(total, self._s.balances)
            for txn in fresh:
                self._append(txn)
            named = (a for txn in txns for a in net_changes(txn))
            return Posted(new, {a: self._s.balances.get(a, 0) for a in named})

    def _append(self, txn: Transaction) -> None:
        self._s.ledger_keys.add(txn.idempotency_key)
        self._s.ledger_ids.add(txn.id)
        self._s.entries.extend(
            LedgerEntry(
                transaction_id=txn.id,
                account=p.account,
                amount=p.amount,
                reason=txn.reason,
                job_id=txn.job_id,
                task_id=txn.task_id,
                created_at=txn.created_at,
            )
            for p in txn.postings
        )
        for account, change in net_changes(txn).items():
            self._s.balances[account] = self._s.balances.get(account, 0) + change

    def balance(self, account: str) -> int:
        with self._lock:
            return self._s.balances.get(account, 0)

    def balances(self, prefix: str = "") -> dict[str, int]:
        with self._lock:
            return {a: b for a, b in self._s.balances.items() if a.startswith(prefix)}

    def ledger_entries(
        self, account: str = "", job_id: str = "", limit: int = 100
    ) -> list[LedgerEntry]:
        with self._lock:
            numbered = [
                (e.created_at, n, e)
                for n, e in enumerate(self._s.entries)
                if (not account or e.account == account) and (not job_id or e.job_id == job_id)
            ]
            numbered.sort(key=lambda t: (t[0], t[1]), reverse=True)
            return _copies([e for _, _, e in numbered[:limit]])

    def ledger_totals(self) -> tuple[int, int, int]:
        with self._lock:
            entries = self._s.entries
            return len(self._s.ledger_keys), len(entries), sum(e.amount for e in entries)

    def unbalanced_transactions(self) -> list[tuple[str, int]]:
        sums = self._sum_entries(lambda e: e.transaction_id)
        return sorted((txn_id, total) for txn_id, total in sums.items() if total != 0)

    def computed_balances(self) -> dict[str, int]:
        return self._sum_entries(lambda e: e.account)

    def payments_by_job(self) -> dict[str, int]:
        prefix = node_account("")
        with self._lock:
            paid: dict[str, int] = {}
            for e in self._s.entries:
                if e.job_id and e.account.startswith(prefix):
                    paid[e.job_id] = paid.get(e.job_id, 0) + e.amount
            return paid

    def _sum_entries(self, key: _EntryKey) -> dict[str, int]:
        with self._lock:
            sums: dict[str, int] = {}
            for e in self._s.entries:
                sums[key(e)] = sums.get(key(e), 0) + e.amount
            return sums
