"""Random sequences of posts keep the ledger balanced, on the memory and SQLite stores."""

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sparegrid.coordinator.domain import MINT, Posting, Transaction, client_account, node_account
from sparegrid.coordinator.store.base import InsufficientFunds, Store
from sparegrid.coordinator.store.memory import MemoryStore
from sparegrid.coordinator.store.sqlite import SqliteStore

ACCOUNTS = [client_account("a"), client_account("b"), node_account("n1"), node_account("n2")]

# (payer, [(payee, amount)]): a grant when the payer is MINT, else a transfer that may fail
payments = st.tuples(
    st.sampled_from([MINT, *ACCOUNTS]),
    st.lists(st.tuples(st.sampled_from(ACCOUNTS), st.integers(0, 60)), min_size=1, max_size=3),
)
# None re-posts an earlier transaction's idempotency key.
steps = st.lists(st.one_of(payments, st.none()), max_size=25)


@contextmanager
def open_backend(backend: str, tmp_path: Path) -> Iterator[Store]:
    if backend == "memory":
        yield MemoryStore()
        return
    store = SqliteStore(tmp_path / f"{uuid.uuid4().hex}.db", synchronous="NORMAL")
    try:
        yield store
    finally:
        store.close()


def check_invariants(store: Store, expected: dict[str, int]) -> None:
    balances = store.balances()
    assert balances == expected
    assert sum(balances.values()) == 0
    assert store.computed_balances() == balances
    assert store.unbalanced_transactions() == []
    assert store.ledger_totals()[2] == 0
    assert all(b >= 0 for a, b in balances.items() if a != MINT)


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(steps=steps)
def test_random_posts_keep_the_ledger_balanced(
    backend: str, tmp_path: Path, steps: list[tuple[str, list[tuple[str, int]]] | None]
) -> None:
    expected: dict[str, int] = {}
    posted: list[Transaction] = []
    with open_backend(backend, tmp_path) as store:
        for n, step in enumerate(steps):
            if step is None:
                if posted:
                    assert not store.post(posted[n % len(posted)])
                continue
            payer, payees = step
            total = sum(amount for _, amount in payees)
            txn = Transaction(
                f"t{n}",
                f"k{n}",
                "pay",
                [Posting(payer, -total)] + [Posting(a, m) for a, m in payees],
            )
            affordable = payer == MINT or expected.get(payer, 0) >= total - sum(
                m for a, m in payees if a == payer
            )
            if affordable:
                assert store.post(txn)
                posted.append(txn)
                for posting in txn.postings:
                    expected[posting.account] = expected.get(posting.account, 0) + posting.amount
            else:
                with pytest.raises(InsufficientFunds):
                    store.post(txn)
            check_invariants(store, expected)
