"""Dashboard sign-in: an account's API key, posted once, becomes a session cookie.

The key travels only in the login form's body, never in a URL, and is never logged or
kept: the session remembers the account and the hash of the key it was opened with, so
a key that is rotated or revoked ends its sessions at their next request. Session tokens
are random (256 bits) and kept hashed; a token is found by its hash and compared in
constant time. Failed sign-ins are limited per client address.
"""

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict, deque
from dataclasses import dataclass

COOKIE = "sparegrid_session"
TTL_SECONDS = 12 * 3600
MAX_SESSIONS = 10_000
# one account's sessions: its oldest ends past this, not another account's (one key signing
# in 10,000 times ended every other account's session, the admins' included)
MAX_ACCOUNT_SESSIONS = 32
FAILURES_ALLOWED = 10  # failed sign-ins per address per window
FAILURE_WINDOW = 60.0
MAX_ADDRESSES = 10_000


def cookie_name(scheme: str) -> str:
    """The session cookie's name: over HTTPS with the `__Host-` prefix, so a browser takes
    it only Secure, for Path=/ and without a Domain, and no sibling subdomain or plain-HTTP
    page can set one in its place; over plain HTTP, where a browser refuses that prefix,
    the bare name."""
    return f"__Host-{COOKIE}" if scheme == "https" else COOKIE


@dataclass
class Session:
    account_id: str
    key_hash: str  # the account's key hash when it signed in
    token_hash: str
    expires: float


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Sessions:
    def __init__(self, ttl: float = TTL_SECONDS, limit: int = MAX_SESSIONS) -> None:
        self.ttl = ttl
        self.limit = limit
        self._by_hash: OrderedDict[str, Session] = OrderedDict()
        self._of: dict[str, list[str]] = {}  # account id -> its sessions' hashes, oldest first
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def open(self, account_id: str, key_hash: str) -> str:
        """A new session's token (for the cookie). Past MAX_ACCOUNT_SESSIONS the account's
        oldest session ends; past the limit, the oldest of all."""
        token = secrets.token_urlsafe(32)
        digest = _hash(token)
        self._by_hash[digest] = Session(account_id, key_hash, digest, time.time() + self.ttl)
        mine = self._of.setdefault(account_id, [])
        mine.append(digest)
        if len(mine) > MAX_ACCOUNT_SESSIONS:
            self._drop(mine[0])
        while len(self._by_hash) > self.limit:
            self._drop(next(iter(self._by_hash)))
        return token

    def _drop(self, digest: str) -> None:
        session = self._by_hash.pop(digest, None)
        if session is None:
            return
        mine = self._of[session.account_id]
        mine.remove(digest)
        if not mine:
            del self._of[session.account_id]

    def get(self, token: str) -> Session | None:
        if not token or len(token) > 100:
            return None
        digest = _hash(token)
        session = self._by_hash.get(digest)
        if session is None or not hmac.compare_digest(session.token_hash, digest):
            return None
        if session.expires < time.time():
            self._drop(digest)
            return None
        return session

    def close(self, token: str) -> None:
        self._drop(_hash(token))

    def limited(self, address: str) -> bool:
        """Whether this address failed to sign in too often lately."""
        recent = self._failures.get(address)
        now = time.time()
        while recent and recent[0] < now - FAILURE_WINDOW:
            recent.popleft()
        return recent is not None and len(recent) >= FAILURES_ALLOWED

    def failed(self, address: str) -> None:
        recent = self._failures.setdefault(address, deque(maxlen=FAILURES_ALLOWED))
        recent.append(time.time())
        self._failures.move_to_end(address)
        while len(self._failures) > MAX_ADDRESSES:
            self._failures.popitem(last=False)
