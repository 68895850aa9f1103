"""Ledger rules every store applies the same way, before it writes anything."""

from collections.abc import Mapping

from sparegrid.coordinator.domain import MAX_BALANCE, MINT, AttemptState, Transaction
from sparegrid.coordinator.store.base import BalanceOverflow, InsufficientFunds

# Attempt states that count against a node in node_failures.
FAILED_ATTEMPT_STATES = (AttemptState.FAILED, AttemptState.EXPIRED, AttemptState.REJECTED)


def net_changes(txn: Transaction) -> dict[str, int]:
    """The change of each account's balance, in the order accounts first appear.

    Raises ValueError when the postings do not sum to zero.
    """
    total = sum(p.amount for p in txn.postings)
    if total != 0:
        raise ValueError(f"transaction {txn.id} ({txn.reason}) postings sum to {total}, not 0")
    changes: dict[str, int] = {}
    for posting in txn.postings:
        changes[posting.account] = changes.get(posting.account, 0) + posting.amount
    return changes


def check_funds(changes: Mapping[str, int], balances: Mapping[str, int]) -> None:
    """Raises InsufficientFunds for the first account other than MINT that would go below 0,
    and BalanceOverflow for one whose balance would pass MAX_BALANCE either way (the mint's
    once more than 2^63 - 1 credit is issued in all): a BIGINT holds no more."""
    for account, change in changes.items():
        balance = balances.get(account, 0)
        if account != MINT and balance + change < 0:
            raise InsufficientFunds(account, balance, -change)
        if not -MAX_BALANCE <= balance + change <= MAX_BALANCE:
            raise BalanceOverflow(account, balance, change)
