"""Invitation codes: an operator issues them, and whoever holds one creates an account of
their own (`sparegrid account signup`) without the operator running a command for them.

A code is 32 random bytes (256 bits, so guessing one is hopeless); the coordinator keeps
only its SHA-256, as it does for API keys. Each allows `uses` signups, each granted
`credit` through the ledger, until it expires or is revoked. A signup counts its use in
the same transaction that creates the account and grants the credit: a signup refused
(a name taken, a code used up by a signup racing it) changes nothing, and two signups
racing for a code's last use cannot both win. With no codes issued no one can sign up.

Signups need no API key, so attempts are limited per caller address (`SignupLimiter`, a
token bucket per address): a flood of guesses, or of accounts from a code for many, is
refused (RESOURCE_EXHAUSTED, told when to try again).
"""

import hashlib
import secrets
import uuid
from dataclasses import dataclass

from sparegrid.coordinator.clock import Clock
from sparegrid.coordinator.domain import MAX_BALANCE, Account, Invite
from sparegrid.coordinator.errors import CoordinatorError, ErrorKind, invalid, not_found
from sparegrid.coordinator.services.accounts import Accounts, check_amount, check_name
from sparegrid.coordinator.services.events import EventKind, Events
from sparegrid.coordinator.store.base import Store

CODE_PREFIX = "sgi_"
MAX_USES = 100_000
MAX_EXPIRY = 10 * 365 * 86400.0  # seconds: ten years
NOTE_LIMIT = 200  # characters of a note
CODE_LIMIT = 200  # characters of a code sent: longer is not a code
# No one signs up as a system account (canaries.CANARY_ACCOUNT is made on first use: its
# holder would see which tasks are known-answer checks).
RESERVED_PREFIX = "sparegrid"


def hash_code(code: str) -> str:
    return hashlib.sha256(code.encode()).hexdigest()


def new_code() -> str:
    return CODE_PREFIX + secrets.token_urlsafe(32)


@dataclass
class SignupConfig:
    burst: int = 5  # signup attempts one address may make at once
    per_minute: float = 1.0  # and then this many a minute
    max_addresses: int = 10_000  # addresses remembered (full buckets are forgotten first)


class SignupLimiter:
    """A token bucket per caller address: `burst` attempts, then `per_minute`."""

    def __init__(self, clock: Clock, config: SignupConfig) -> None:
        self.clock = clock
        self.config = config
        self._buckets: dict[str, tuple[float, float]] = {}  # address -> tokens, updated
        self.refused = 0

    def _tokens(self, address: str, now: float) -> float:
        cfg = self.config
        tokens, updated = self._buckets.get(address, (float(cfg.burst), now))
        return min(float(cfg.burst), tokens + (now - updated) * cfg.per_minute / 60.0)

    def admit(self, address: str) -> None:
        """Takes a token for one attempt from `address`; refuses when none is left."""
        now = self.clock.now()
        tokens = self._tokens(address, now)
        if tokens < 1.0:
            self.refused += 1
            wait = (1.0 - tokens) * 60.0 / max(self.config.per_minute, 1e-9)
            raise CoordinatorError(
                ErrorKind.EXHAUSTED,
                "TOO_MANY_SIGNUPS",
                f"too many signup attempts from your address; try again in {wait:.0f} s",
                retry_after=wait,
            )
        self._buckets.pop(address, None)  # the newest last, for the trim below
        self._buckets[address] = (tokens - 1.0, now)
        self._trim(now)

    def _trim(self, now: float) -> None:
        if len(self._buckets) <= self.config.max_addresses:
            return
        full = float(self.config.burst)
        for address in [a for a in self._buckets if self._tokens(a, now) >= full]:
            del self._buckets[address]
        while len(self._buckets) > self.config.max_addresses:  # the least recent go
            del self._buckets[next(iter(self._buckets))]


@dataclass
class SignedUp:
    account: Account
    api_key: str
    invite: Invite


class Invites:
    def __init__(
        self, store: Store, accounts: Accounts, events: Events, clock: Clock, config: SignupConfig
    ) -> None:
        self._store = store
        self._accounts = accounts
        self._events = events
        self._clock = clock
        self.limiter = SignupLimiter(clock, config)

    def create(self, uses: int, expires_in: float, credit: int, note: str) -> tuple[Invite, str]:
        """Issues a code (returned only now) for `uses` signups, each granted `credit`,
        expiring `expires_in` seconds from now (0: never)."""
        uses = uses or 1
        if not 1 <= uses <= MAX_USES:
            raise invalid("BAD_USES", f"an invitation allows 1 to {MAX_USES} signups, not {uses}")
        if not 0 <= expires_in <= MAX_EXPIRY:
            raise invalid(
                "BAD_EXPIRY",
                f"an invitation expires within ten years ({MAX_EXPIRY:.0f} s), or never; "
                f"not in {expires_in:g} s",
            )
        check_amount(credit, allow_zero=True)
        self._check_room(uses, credit)
        if len(note) > NOTE_LIMIT:
            raise invalid("BAD_NOTE", f"a note holds at most {NOTE_LIMIT} characters")
        code, now = new_code(), self._clock.now()
        invite = Invite(
            id=uuid.uuid4().hex[:12],
            code_hash=hash_code(code),
            uses=uses,
            credit=credit,
            note=note,
            created_at=now,
            expires_at=now + expires_in if expires_in else 0.0,
        )
        self._store.add_invite(invite)
        return invite, code

    def _check_room(self, uses: int, credit: int) -> None:
        """Refuses an invitation whose signups together would grant more credit than the
        ledger can still issue: its last signups would be refused (CREDIT_LIMIT)."""
        issued = self._accounts.issued()
        if uses * credit > MAX_BALANCE - issued:
            raise CoordinatorError(
                ErrorKind.PRECONDITION,
                "CREDIT_LIMIT",
                f"an invitation for {uses} signups at {credit} credit each grants "
                f"{uses * credit} credit in all; the ledger holds at most {MAX_BALANCE} "
                f"(2^63 - 1), of which {issued} is issued already: at most "
                f"{MAX_BALANCE - issued} more. Allow fewer signups or less credit each",
            )

    def list(self) -> list[Invite]:
        return self._store.list_invites()

    def revoke(self, invite_id: str) -> Invite:
        invite = self._store.get_invite(invite_id) if invite_id else None
        if invite is None:
            raise not_found(
                "INVITE_NOT_FOUND",
                f"no invitation {invite_id!r}; `sparegrid admin invite list` lists them",
            )
        self._store.revoke_invite(invite.id)
        invite.revoked = True
        return invite

    def signup(self, code: str, name: str) -> SignedUp:
        """Creates an account with an invitation code, counting one of its uses; refused,
        changing nothing, for a code unknown, revoked, expired or used up, and for a name
        that is bad or taken (checked only once the code is good: no names are told to
        those without one)."""
        code_hash = hash_code(code) if 0 < len(code) <= CODE_LIMIT else ""
        invite = self._usable(code_hash)
        name = name or f"user-{secrets.token_hex(4)}"
        check_name(name)
        if name.startswith(RESERVED_PREFIX):  # the canaries' account, made when first needed
            raise invalid(
                "BAD_NAME",
                f"account names starting with {RESERVED_PREFIX!r} are kept for the "
                "coordinator's own accounts; choose another",
            )
        with self._store.transaction():
            if not self._store.use_invite(code_hash, self._clock.now()):
                self._usable(code_hash)  # changed since it was read: says how
                raise _used_up(invite)
            account, key = self._create(name, invite)
            self._events.emit(
                EventKind.SIGNUP,
                f"account {name!r} signed up with invitation {invite.id} ({invite.credit} credit)",
                account=name,
                invite=invite.id,
                credit=invite.credit,
            )
        invite.used += 1
        return SignedUp(account, key, invite)

    def _create(self, name: str, invite: Invite) -> tuple[Account, str]:
        """The signup's account, granted the invitation's credit; refused (CREDIT_LIMIT)
        when the credit issued in all would pass what the ledger holds."""
        try:
            return self._accounts.create(
                name, invite.credit, reason=f"signup with invitation {invite.id}"
            )
        except CoordinatorError as exc:
            if exc.code != "CREDIT_LIMIT":
                raise
            raise CoordinatorError(
                ErrorKind.PRECONDITION,
                "CREDIT_LIMIT",
                f"invitation {invite.id} grants {invite.credit} credit, more than this "
                f"coordinator can issue now (the ledger holds at most {MAX_BALANCE} in all): "
                "no account was created and the code was not used; ask its operator",
            ) from None

    def _usable(self, code_hash: str) -> Invite:
        """The invitation the code opens, if it is usable now; else why not."""
        invite = self._store.find_invite(code_hash) if code_hash else None
        if invite is None:
            raise CoordinatorError(
                ErrorKind.PERMISSION,
                "INVITE_UNKNOWN",
                "this invitation code is not known to the coordinator: check that it was "
                "copied whole, or ask its operator for one",
            )
        if invite.revoked:
            raise CoordinatorError(
                ErrorKind.PERMISSION,
                "INVITE_REVOKED",
                f"invitation {invite.id} was revoked by the operator; ask them for another",
            )
        if invite.expires_at and invite.expires_at <= self._clock.now():
            raise CoordinatorError(
                ErrorKind.PERMISSION,
                "INVITE_EXPIRED",
                f"invitation {invite.id} has expired; ask the operator for another",
            )
        if invite.used >= invite.uses:
            raise _used_up(invite)
        return invite


def _used_up(invite: Invite) -> CoordinatorError:
    return CoordinatorError(
        ErrorKind.PERMISSION,
        "INVITE_USED_UP",
        f"invitation {invite.id} has been used for all {invite.uses} signup(s) it allows; "
        "ask the operator for another",
    )
