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

A worker's outputs sent inline with its result, rather than uploaded, are blobs kept in the
database: they count as uploads of the node's holder, stored from the result's acceptance,
and a result whose inline outputs do not fit the stored quota is refused (InlineCharges).
"""

from collections.abc import Iterable
from dataclasses import dataclass

from sparegrid.coordinator.clock import Clock
from sparegrid.coordinator.errors import CoordinatorError, ErrorKind
from sparegrid.coordinator.services.identity import is_anonymous
from sparegrid.coordinator.store.base import ANONYMOUS_POOL, Store, Usage
from sparegrid.wire.config import show_size

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
        whose, hint = _whose(holder)
        what = f"upload of {show_size(size)}"
        _fit(whose, what, store.usage(holder.name), config.in_flight, config.stored, "", hint)
        if holder.anonymous:
            pool = store.anonymous_usage()
            in_flight, stored = config.anonymous_in_flight, config.anonymous_stored
            whose = "nodes without an owner account together"
            _fit(whose, what, pool, in_flight, stored, "anonymous-", _OWNER_HINT)

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

    def inline(self, holder: Holder) -> "InlineCharges":
        """Charges for the inline outputs of one batch of results from a node of `holder`."""
        return InlineCharges(self._store, self.config, holder)

    def _now(self) -> float:
        return self._clock.now()


class InlineCharges:
    """What the inline outputs of one batch of results add to its node's holder, checked
    result by result against the stored quotas (the anonymous pool's too). A blob is
    charged to a holder once: one charged already, or by an earlier result of the batch,
    adds nothing. Only results that passed every other check are counted. A batch costs
    two reads at most: which of its inline blobs are charged already (`look_up`, once),
    and the holder's usage; its writes (Store.put_inline_blobs, told which blobs are
    `fresh`) come after all its checks. An empty output costs nothing and is looked up
    for nothing."""

    def __init__(self, store: Store, config: QuotaConfig, holder: Holder) -> None:
        self._store = store
        self._config = config
        self.holder = holder
        self._looked: set[str] = set()  # digests whose charge was read
        self._before: set[str] = set()  # of those, the ones charged before this batch
        self._taken: set[str] = set()  # digests the batch's results taken so far carry
        self._usage: list[Usage] | None = None  # the holder's, then the pool's
        self.added = 0  # bytes the batch's results taken so far add
        self.full: set[str] = set()  # whose quotas refused a result: the holder, the pool

    def look_up(self, digests: Iterable[str]) -> None:
        """Reads which of `digests` are charged to the holder already, in one query: the
        blobs a whole batch sends inline, before its results are taken one by one."""
        unread = [digest for digest in digests if digest not in self._looked]
        if unread:
            self._before |= self._store.charged(self.holder.name, unread)
            self._looked.update(unread)

    def take(self, sizes: dict[str, int]) -> None:
        """Counts one result's inline outputs (size by digest); QUOTA_EXCEEDED, counting
        nothing, when they do not fit."""
        sizes = {digest: size for digest, size in sizes.items() if size}
        self.look_up(sizes)
        size = sum(n for d, n in sizes.items() if d not in self._before and d not in self._taken)
        if size:
            self._check(size)
        self._taken |= sizes.keys()
        self.added += size

    def fresh(self, digests: Iterable[str]) -> set[str]:
        """Those of the digests (taken, or empty) that were not charged to the holder
        before this batch."""
        return {digest for digest in digests if digest not in self._before}

    def _check(self, size: int) -> None:
        store, config, holder = self._store, self._config, self.holder
        if self._usage is None:
            self._usage = [store.usage(holder.name)]
            if holder.anonymous:
                self._usage.append(store.anonymous_usage())
        what = f"result with {show_size(size)} of outputs sent inline"
        extra = self.added + size
        whose, hint = _whose(holder)
        # what is in flight counts against the stored quota too, as for an upload
        held = [u.in_flight + u.stored + extra for u in self._usage]
        over = holder.name
        try:
            _fit(whose, what, Usage(0, held[0]), 0, config.stored, "", hint)
            if holder.anonymous:
                over = ANONYMOUS_POOL
                whose = "nodes without an owner account together"
                stored = config.anonymous_stored
                _fit(whose, what, Usage(0, held[1]), 0, stored, "anonymous-", _OWNER_HINT)
        except CoordinatorError:
            self.full.add(over)
            raise


def _whose(holder: Holder) -> tuple[str, str]:
    """The holder in words, and how it gets more room."""
    if holder.anonymous:
        return f"anonymous node {holder.name.removeprefix('node:')}", _OWNER_HINT
    return f"account {holder.name!r} (its nodes included)", _OPERATOR_HINT


def _fit(
    whose: str, what: str, usage: Usage, in_flight: int, stored: int, flag: str, hint: str
) -> None:
    """QUOTA_EXCEEDED, naming the quota and how to get more, when usage (what is refused
    included) is over either quota."""
    if usage.in_flight > in_flight:
        problem = (
            f"{whose} would have {show_size(usage.in_flight)} of uploads in flight, over the "
            f"quota of {show_size(in_flight)} (--{flag}in-flight-quota): finish or give up other "
            "uploads (an unfinished one lapses after --upload-expiry)"
        )
    elif usage.in_flight + usage.stored > stored:
        problem = (
            f"{whose} would hold {show_size(usage.in_flight + usage.stored)} of uploads (outputs "
            f"sent inline included), over the quota of {show_size(stored)} (--{flag}stored-quota): "
            "an upload counts until it is collected, or for --blob-retention after it"
        )
    else:
        return
    raise CoordinatorError(
        ErrorKind.EXHAUSTED, "QUOTA_EXCEEDED", f"{what} refused: {problem}; or {hint}"
    )


# An account asking about a blob it holds renews it (its use and its charge) at most this
# often, and at most a tenth of the retention: a question asked again meanwhile writes
# nothing (a loop of StatBlob was a loop of group commits), and the blob it keeps stays
# used within a tenth of the retention of every question, far from being collected.
RENEW_SECONDS = 60.0
RENEWALS_KEPT = 100_000  # (account, blob) pairs remembered; past it the oldest go


class Renewals:
    """When each account last renewed each blob by asking about it (in memory: after a
    restart the first question renews again)."""

    def __init__(self, clock: Clock, retention: float) -> None:
        self._clock = clock
        self.interval = min(RENEW_SECONDS, retention / 10)
        self._at: dict[tuple[str, str], float] = {}  # (account id, digest) -> renewed at

    def due(self, account_id: str, digest: str) -> bool:
        """Whether a question about the blob renews it: none did within the interval."""
        at = self._at.get((account_id, digest))
        return at is None or self._clock.now() - at >= self.interval

    def renewed(self, account_id: str, digest: str) -> None:
        """The renewal was written (in a group commit) now."""
        key, now = (account_id, digest), self._clock.now()
        self._at.pop(key, None)  # the most recent last, for the trim below
        self._at[key] = now
        if len(self._at) > RENEWALS_KEPT:
            for old in [k for k, t in self._at.items() if now - t >= self.interval]:
                del self._at[old]
            while len(self._at) > RENEWALS_KEPT * 9 // 10:  # the least recent go
                del self._at[next(iter(self._at))]
