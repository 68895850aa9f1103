"""Who a node answers for, and whether its results count as votes.

A node proves an owner account when it connects, with that account's API key; without one
it is anonymous, its own owner "node:<id>". A node key costs nothing, so anonymous nodes
add no voting power: they may work and be paid, but only for results that a node of an
owner account has checked, and their results never count as a vote or as a check, alone
or beside owned nodes. Accounts are what an attacker must pay for: the operator creates
them (or approves each node, or asks for a stake), and replicas of a task never go to two
nodes of one owner.

An owned node is *vetted* (its results count) when its owner holds at least the
coordinator's minimum stake: credit locked in the ledger that proven fraud is slashed from.
"""

import logging
from dataclasses import dataclass
from enum import StrEnum

from sparegrid.coordinator.clock import Clock
from sparegrid.coordinator.domain import Node, stake_account
from sparegrid.coordinator.errors import CoordinatorError, ErrorKind, invalid
from sparegrid.coordinator.services.ledger import Ledger
from sparegrid.coordinator.store.base import InsufficientFunds, Store

log = logging.getLogger("sparegrid.coordinator.identity")

ANONYMOUS_PREFIX = "node:"


def is_anonymous(owner: str) -> bool:
    """Whether an owner is a node alone ("node:<id>"), not an account."""
    return not owner or owner.startswith(ANONYMOUS_PREFIX)


class Enrollment(StrEnum):
    OPEN = "open"  # any node may work; only nodes of owner accounts vote
    APPROVE = "approve"  # a new node gets work once the operator approves it
    OWNERS = "owners"  # only nodes of owner accounts may connect


@dataclass
class IdentityConfig:
    enrollment: Enrollment = Enrollment.OPEN
    # credit an owner must have staked for its nodes' results to count as votes
    min_stake: int = 0
    # a proven fraud costs the owner this many times the task's credit, from its stake
    slash_factor: int = 10
    # how long a stake stays locked after the owner's nodes last returned a result
    stake_lock_seconds: float = 24 * 3600.0


class Identities:
    """Stakes of owners, kept in memory (they change only through this coordinator's
    ledger calls), and the rules built on them."""

    def __init__(self, store: Store, ledger: Ledger, clock: Clock, config: IdentityConfig) -> None:
        self._store = store
        self._ledger = ledger
        self._clock = clock
        self.config = config
        self._stakes: dict[str, int] = {}

    def load(self) -> None:
        prefix = stake_account("")
        self._stakes = {
            account[len(prefix) :]: balance
            for account, balance in self._store.balances(prefix).items()
        }

    def stake(self, owner: str) -> int:
        return self._stakes.get(owner, 0)

    def set_stake(self, owner: str, amount: int) -> None:
        self._stakes[owner] = amount

    def vetted(self, owner: str) -> bool:
        """Whether results of this owner's nodes count as votes and checks."""
        if is_anonymous(owner):
            return False
        return self.config.min_stake <= 0 or self.stake(owner) >= self.config.min_stake

    def why_not_vetted(self, owner: str) -> str:
        if is_anonymous(owner):
            return "the node has no owner account"
        if not self.vetted(owner):
            return (
                f"owner {owner} has {self.stake(owner)} credit staked, "
                f"{self.config.min_stake} needed"
            )
        return ""

    def add_stake(self, owner: str, amount: int, key: str) -> int:
        """Locks `amount` of the owner's credit as its stake; the stake now."""
        _check_amount(amount)
        try:
            self._ledger.stake(owner, amount, key)
        except InsufficientFunds as exc:
            raise CoordinatorError(
                ErrorKind.PRECONDITION,
                "INSUFFICIENT_CREDIT",
                f"account {owner!r} holds {exc.balance} credit, {amount} asked to stake",
            ) from None
        self.load()
        return self.stake(owner)

    def release_stake(self, owner: str, amount: int, key: str) -> int:
        """Gives `amount` of the owner's stake back, once none of its nodes has been seen for
        the lock time: a node caught cheating must find its bond still there."""
        _check_amount(amount)
        if amount > self.stake(owner):
            raise invalid(
                "BAD_AMOUNT", f"account {owner!r} has {self.stake(owner)} staked, not {amount}"
            )
        now, lock = self._clock.now(), self.config.stake_lock_seconds
        seen = [n for n in self._store.list_nodes() if n.owner == owner]
        last = max((n.last_seen for n in seen), default=0.0)
        if last + lock > now:
            hours = (last + lock - now) / 3600
            raise CoordinatorError(
                ErrorKind.PRECONDITION,
                "STAKE_LOCKED",
                f"a node of {owner!r} was seen {(now - last) / 60:.0f} min ago: a stake unlocks "
                f"{lock / 3600:g} h after the owner's nodes were last seen (in {hours:.1f} h)",
            )
        self._ledger.unstake(owner, amount, key)
        self.load()
        return self.stake(owner)

    def admit(self, node: Node) -> None:
        """Refuses a node the enrollment setting keeps out: under `owners`, one that did
        not prove an owner account."""
        if self.config.enrollment == Enrollment.OWNERS and is_anonymous(node.owner):
            raise CoordinatorError(
                ErrorKind.PERMISSION,
                "OWNER_REQUIRED",
                "this coordinator takes only nodes of owner accounts: start the worker with "
                "the account's API key (SPAREGRID_OWNER_KEY or --owner-key-file)",
            )

    def free_stake(self, credit: int, uses: int) -> str:
        """What an invitation granting `credit` to each of `uses` signups gives away, when
        that credit pays the stake votes cost (--min-stake): each signup can stake it and
        count as a paying owner, so its holder gets that many votes for nothing. "" when
        it does not."""
        least = self.config.min_stake
        if least <= 0 or credit < least:
            return ""
        owners = "an owner" if uses == 1 else f"{uses} owners"
        return (
            f"each signup is granted {credit} credit, at least the {least} stake a vote "
            f"costs (--min-stake): whoever holds the code can stake it and vote as "
            f"{owners} who paid would; grant less than {least}, or create the accounts "
            "yourself"
        )

    def keep_owner(self, node: Node, known: Node | None) -> None:
        """Refuses a node key that proved an owner account before and now proves another,
        or none: a node answers for one owner for good. What its failures counted for is
        kept with its attempts and read back, after a restart, as its owner's (Claim):
        a node moved to a second account, or to none, would then count its owner's claim
        that a task is bad, or its timeout owed pay, as a second owner's, and with that
        owner's next one end the task or be paid twice. A node that was anonymous may
        prove an account later (its owner is added, not swapped)."""
        if known is None or is_anonymous(known.owner) or known.owner == node.owner:
            return
        raise CoordinatorError(
            ErrorKind.PERMISSION,
            "NODE_OWNER_CHANGED",
            f"node {node.id} belongs to another owner account than the key it sent "
            "proves (or it sent none): start it with the API key of the account it "
            "registered with (SPAREGRID_OWNER_KEY or --owner-key-file), or with a new "
            "--data-dir (a new node key) to run it for this account",
        )

    @property
    def needs_approval(self) -> bool:
        return self.config.enrollment == Enrollment.APPROVE


def _check_amount(amount: int) -> None:
    if not 1 <= amount <= 10**15:
        raise invalid("BAD_AMOUNT", f"a stake moves 1 to 10^15 credit, not {amount}")
