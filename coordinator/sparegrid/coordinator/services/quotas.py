"""Upload quotas: how many bytes each holder may have in flight and stored.

A holder is an account (a client's uploads) or a node's owner (a worker's uploads of its
outputs): the nodes of one owner account share its quota, with the account's own uploads.
A node without an owner account is its own holder, "node:<id>", and a fresh node key
costs nothing, so anonymous nodes also count together, as one pool with smaller limits.

In flight: the announced size of every upload begun and not finished. It is reserved when
the upload starts, so an upload never fails half way for quota, and released when it
finishes or its partial file expires. Stored: the blobs the holder uploaded, from the
upload until the blob is collected or the retention has passed (a blob a job still holds
then is kept for the job). Uploading a stored blob again, or asking whether it is stored,
charges it afresh. An upload must fit both: its size and what is in flight within the
in-flight quota, and those and what is stored within the stored quota.
"""

from dataclasses import dataclass

from sparegrid.coordinator.clock import Clock
from sparegrid.coordinator.errors import CoordinatorError, ErrorKind
from sparegrid.coordinator.services.identity import is_anonymous
from sparegrid.coordinator.store.base import Store, Usage

GiB = 1 << 30


@dataclass
class QuotaConfig:
    in_flight: int = 64 * GiB  # per holder: unfinished uploads, at their announced size
    stored: int = 1024 * GiB  # per holder: stored blobs it uploaded, and those in flight
    anonymous_in_flight: int = 16 * GiB  # every node without an owner account, together
    anonymous_stored: int = 64 * GiB


@dataclass(frozen=True)
class Holder:
    name: str  # an account name, or "node:<id>" for a node without an owner account
    anonymous: bool

    @classmethod
    def of(cls, owner: str) -> "Holder":
        return cls(owner, is_anonymous(owner))


_OWNER_HINT = "start the worker with an owner account's key (SPAREGRID_OWNER_KEY)"
_OPERATOR_HINT = "ask the coordinator's operator to raise it"


def _size(n: int) -> str:
    for unit, scale in (("GiB", GiB), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


class Quotas:
    def __init__(self, store: Store, clock: Clock, config: QuotaConfig) -> None:
        self._store = store
        self._clock = clock
        self.config = config

    def begin(self, uploader: str, digest: str, holder: Holder, size: int) -> None:
        """Reserves an upload's announced size (a resumed upload renews its reservation);
        QUOTA_EXCEEDED, reserving nothing, when it does not fit."""
        store = self._store
        with store.transaction():
            store.put_partial(uploader, digest, holder.name, holder.anonymous, size, self._now())
            self._check(holder, size)

    def _check(self, holder: Holder, size: int) -> None:
        config, store = self.config, self._store
        if holder.anonymous:
            whose, hint = f"anonymous node {holder.name.removeprefix('node:')}", _OWNER_HINT
        else:
            whose, hint = f"account {holder.name!r} (its nodes included)", _OPERATOR_HINT
        _fit(whose, size, store.usage(holder.name), config.in_flight, config.stored, "", hint)
        if holder.anonymous:
            pool = store.anonymous_usage()
            in_flight, stored = config.anonymous_in_flight, config.anonymous_stored
            whose = "nodes without an owner account together"
            _fit(whose, size, pool, in_flight, stored, "anonymous-", _OWNER_HINT)

    def abandoned(self, uploader: str, digest: str) -> None:
        """Its partial file is gone (a wrong digest, expiry): its reservation ends."""
        self._store.drop_partials([(uploader, digest)])

    def stored(self, uploader: str, digest: str, holder: Holder | None, size: int) -> None:
        """A blob is stored, uploaded now (charged to the holder; None: named, not
        uploaded, a use without a charge); any reservation of the upload ends."""
        store = self._store
        with store.transaction():
            store.drop_partials([(uploader, digest)])
            name, anonymous = (holder.name, holder.anonymous) if holder else ("", False)
            store.record_blob(digest, size, self._now(), name, anonymous)

    def _now(self) -> float:
        return self._clock.now()


def _fit(
    whose: str, size: int, usage: Usage, in_flight: int, stored: int, flag: str, hint: str
) -> None:
    """QUOTA_EXCEEDED, naming the quota and how to get more, when usage (the new upload
    included) is over either quota."""
    if usage.in_flight > in_flight:
        problem = (
            f"{whose} would have {_size(usage.in_flight)} of uploads in flight, over the "
            f"quota of {_size(in_flight)} (--{flag}in-flight-quota): finish or give up other "
            "uploads (an unfinished one lapses after --upload-expiry)"
        )
    elif usage.in_flight + usage.stored > stored:
        problem = (
            f"{whose} would hold {_size(usage.in_flight + usage.stored)} of uploads, over the "
            f"quota of {_size(stored)} (--{flag}stored-quota): an upload counts until it is "
            "collected, or for --blob-retention after it"
        )
    else:
        return
    raise CoordinatorError(
        ErrorKind.EXHAUSTED,
        "QUOTA_EXCEEDED",
        f"upload of {_size(size)} refused: {problem}; or {hint}",
    )
