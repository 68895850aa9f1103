"""Accounts and API keys. Only the SHA-256 of a key is stored.

An operator may disable an account (its key is refused, and its nodes cannot connect; jobs
it submitted before run on and settle as usual, and `admin jobs cancel` stops them), rotate
its key (the old one stops working at once), revoke it (no key works until rotated), and
debit its credit back to the mint. None of these may leave the coordinator without an
enabled admin account that has a key.
"""

import hashlib
import hmac
import re
import secrets
import uuid

from sparegrid.coordinator.clock import Clock
from sparegrid.coordinator.domain import (
    MAX_BALANCE,
    MINT,
    REVOKED_KEY,
    Account,
    client_account,
)
from sparegrid.coordinator.errors import CoordinatorError, ErrorKind, invalid, not_found
from sparegrid.coordinator.services.ledger import Ledger
from sparegrid.coordinator.store.base import BalanceOverflow, Conflict, InsufficientFunds, Store

_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")
MAX_GRANT = 10**15


def hash_key(api_key: str) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()


def new_api_key() -> str:
    return "sg_" + secrets.token_urlsafe(32)


class Accounts:
    def __init__(self, store: Store, ledger: Ledger, clock: Clock) -> None:
        self._store = store
        self._ledger = ledger
        self._clock = clock

    def authenticate(self, api_key: str) -> Account:
        account = self._store.get_account_by_key_hash(hash_key(api_key)) if api_key else None
        if account is None:
            raise CoordinatorError(
                ErrorKind.UNAUTHENTICATED,
                "BAD_API_KEY",
                "the API key is not known to this coordinator; check SPAREGRID_API_KEY",
            )
        if account.disabled:
            raise CoordinatorError(
                ErrorKind.PERMISSION,
                "ACCOUNT_DISABLED",
                f"account {account.name!r} is disabled by the operator of this coordinator",
            )
        return account

    def recheck(self, account: Account) -> Account:
        """The account as it is now, for a stream that authenticated it when it began:
        refused as its key would be now once that key was rotated or revoked, or the
        account disabled, so that such a change ends the streams it had open."""
        now = self._store.get_account(account.id)
        if now is None or not hmac.compare_digest(now.key_hash, account.key_hash):
            raise CoordinatorError(
                ErrorKind.UNAUTHENTICATED,
                "BAD_API_KEY",
                f"the API key of account {account.name!r} this call began with was rotated or "
                "revoked since; call again with the account's current key",
            )
        if now.disabled:
            raise CoordinatorError(
                ErrorKind.PERMISSION,
                "ACCOUNT_DISABLED",
                f"account {now.name!r} is disabled by the operator of this coordinator",
            )
        return now

    def create(
        self, name: str, credit: int, is_admin: bool = False, reason: str = "grant"
    ) -> tuple[Account, str]:
        """Creates an account and returns it with its API key (shown only now); `reason`
        is the initial credit's in the ledger."""
        check_name(name)
        check_amount(credit, allow_zero=True)
        key = new_api_key()
        account = Account(
            id=uuid.uuid4().hex,
            name=name,
            key_hash=hash_key(key),
            is_admin=is_admin,
            created_at=self._clock.now(),
        )
        try:
            with self._store.transaction():
                self._store.create_account(account)
                if credit:
                    self._ledger.grant(name, credit, key=f"initial:{account.id}", reason=reason)
        except Conflict:
            raise CoordinatorError(
                ErrorKind.EXISTS, "ACCOUNT_EXISTS", f"an account named {name!r} exists already"
            ) from None
        except BalanceOverflow:
            raise self.over_limit(credit, f"account {name!r} was not created") from None
        return account, key

    def grant(self, name: str, amount: int, key: str, reason: str) -> tuple[Account, bool]:
        """Grants credit from the mint; False if a grant with this key was made before."""
        account = self.get(name)
        check_amount(amount, allow_zero=False)
        try:
            posted = self._ledger.grant(name, amount, key=f"grant:{key}", reason=reason or "grant")
        except BalanceOverflow:
            raise self.over_limit(amount, "nothing was granted") from None
        return account, posted

    def issued(self) -> int:
        """The credit the mint has issued and not taken back: what all accounts hold."""
        return -self._store.balance(MINT)

    def over_limit(self, amount: int, outcome: str) -> CoordinatorError:
        """The refusal of a grant that would take the credit issued in all past what the
        ledger holds (a BIGINT: on PostgreSQL the balance failed every group commit)."""
        issued = self.issued()
        return CoordinatorError(
            ErrorKind.PRECONDITION,
            "CREDIT_LIMIT",
            f"{issued} credit is issued already; {amount} more would pass {MAX_BALANCE} "
            f"(2^63 - 1), the most the ledger holds in all: {outcome}. At most "
            f"{MAX_BALANCE - issued} more can be granted; `sparegrid admin credit debit` "
            "takes unused credit back",
        )

    def debit(self, name: str, amount: int, key: str, reason: str) -> tuple[Account, bool]:
        """Takes credit back to the mint; refused, booking nothing, beyond the balance.
        False if a debit with this key was made before."""
        account = self.get(name)
        check_amount(amount, allow_zero=False)
        try:
            posted = self._ledger.debit(name, amount, key=f"debit:{key}", reason=reason or "debit")
        except InsufficientFunds as exc:
            raise CoordinatorError(
                ErrorKind.PRECONDITION,
                "INSUFFICIENT_CREDIT",
                f"account {name!r} holds {exc.balance} credit; a debit of {amount} would take "
                "it below zero (nothing was debited)",
            ) from None
        return account, posted

    def set_disabled(self, name: str, disabled: bool) -> Account:
        account = self.get(name)
        if disabled:
            self._keep_an_admin(account, "disable")
        account.disabled = disabled
        self._store.update_account(account)
        return account

    def rotate_key(self, name: str) -> tuple[Account, str]:
        """A new key for the account; the old one stops working now."""
        account = self.get(name)
        key = new_api_key()
        account.key_hash = hash_key(key)
        self._store.update_account(account)
        return account, key

    def revoke_key(self, name: str) -> Account:
        account = self.get(name)
        if not account.has_key:
            raise CoordinatorError(
                ErrorKind.PRECONDITION,
                "NO_KEY",
                f"account {name!r} has no key to revoke; `admin key rotate {name}` gives it one",
            )
        self._keep_an_admin(account, "revoke the key of")
        account.key_hash = f"{REVOKED_KEY}{uuid.uuid4().hex}"
        self._store.update_account(account)
        return account

    def _keep_an_admin(self, account: Account, action: str) -> None:
        """Refuses to take away the last enabled admin account with a key."""
        if not (account.is_admin and account.has_key and not account.disabled):
            return
        others = [
            a
            for a in self._store.list_accounts()
            if a.is_admin and a.has_key and not a.disabled and a.id != account.id
        ]
        if not others:
            raise CoordinatorError(
                ErrorKind.PRECONDITION,
                "LAST_ADMIN",
                f"cannot {action} {account.name!r}: it is the last enabled admin account with "
                "a key; create another with `sparegrid admin account create NAME --admin` first",
            )

    def get(self, name: str) -> Account:
        account = self._store.get_account_by_name(name)
        if account is None:
            raise not_found("ACCOUNT_NOT_FOUND", f"no account named {name!r}")
        return account

    def balance(self, account: Account) -> int:
        return self._store.balance(client_account(account.name))


def check_name(name: str) -> None:
    if not _NAME.fullmatch(name):
        raise invalid(
            "BAD_NAME",
            f"account name {name!r} must be 1-63 lowercase letters, digits, '_', '.' "
            "or '-', starting with a letter or digit",
        )


def check_amount(amount: int, allow_zero: bool) -> None:
    low = 0 if allow_zero else 1
    if not low <= amount <= MAX_GRANT:
        raise invalid("BAD_AMOUNT", f"credit must be between {low} and {MAX_GRANT}, got {amount}")
