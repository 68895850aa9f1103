"""The in-memory store's storage bookkeeping, as sql_storage.py keeps it in SQL."""

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sparegrid.coordinator.domain import JobState, Reputation, Standing, node_account
from sparegrid.coordinator.store.base import LiveJob, Usage

if TYPE_CHECKING:
    from sparegrid.coordinator.store.memory_state import _State

_LIVE = (JobState.QUEUED, JobState.RUNNING)


@dataclass
class _Partial:
    holder: str
    anonymous: bool
    size: int
    updated_at: float


@dataclass
class _Charge:
    anonymous: bool
    size: int
    charged_at: float


@dataclass
class StorageState:
    partials: dict[tuple[str, str], _Partial] = field(default_factory=dict)  # uploader, digest
    blobs: dict[str, tuple[int, float]] = field(default_factory=dict)  # size, last use
    charges: dict[tuple[str, str], _Charge] = field(default_factory=dict)  # holder, digest
    inline_only: set[str] = field(default_factory=set)  # bytes in inline_blobs, no file


class MemoryStorage:
    _lock: threading.RLock
    _s: "_State"

    # unfinished uploads

    def put_partial(
        self, uploader: str, digest: str, holder: str, anonymous: bool, size: int, now: float
    ) -> None:
        with self._lock:
            self._s.storage.partials[uploader, digest] = _Partial(holder, anonymous, size, now)

    def drop_partials(self, keys: list[tuple[str, str]]) -> None:
        with self._lock:
            for key in keys:
                self._s.storage.partials.pop(key, None)

    def stale_partials(self, before: float, limit: int = 1000) -> list[tuple[str, str]]:
        with self._lock:
            stale = [(p.updated_at, k) for k, p in self._s.storage.partials.items()]
            return [k for at, k in sorted(stale) if at < before][:limit]

    # blobs and their charges

    def record_blob(
        self, digest: str, size: int, now: float, holder: str = "", anonymous: bool = False
    ) -> None:
        with self._lock:
            storage = self._s.storage
            _, used_at = storage.blobs.get(digest, (0, now))
            storage.blobs[digest] = (size, max(used_at, now))
            storage.inline_only.discard(digest)
            if holder:
                storage.charges[holder, digest] = _Charge(anonymous, size, now)

    def put_inline_blobs(
        self,
        blobs: dict[str, bytes],
        now: float,
        holder: str = "",
        anonymous: bool = False,
        fresh: set[str] | None = None,  # read here for nothing: charges are exact anyway
    ) -> None:
        with self._lock:
            storage = self._s.storage
            for digest, data in blobs.items():
                self._s.inline_blobs.setdefault(digest, bytes(data))
                if digest in storage.blobs:
                    size, used_at = storage.blobs[digest]
                    storage.blobs[digest] = (size, max(used_at, now))
                else:
                    storage.blobs[digest] = (len(data), now)
                    storage.inline_only.add(digest)
                if holder:
                    storage.charges[holder, digest] = _Charge(anonymous, len(data), now)

    def charged(self, holder: str, digests: list[str]) -> set[str]:
        with self._lock:
            return {d for d in digests if (holder, d) in self._s.storage.charges}

    def adopt_blobs(self, blobs: list[tuple[str, int, float]]) -> int:
        with self._lock:
            known = self._s.storage.blobs
            fresh = {digest: (size, at) for digest, size, at in blobs if digest not in known}
            known.update(fresh)
            self._s.storage.inline_only -= {digest for digest, _, _ in blobs}
            return len(fresh)

    def usage(self, holder: str) -> Usage:
        with self._lock:
            storage = self._s.storage
            return Usage(
                sum(p.size for p in storage.partials.values() if p.holder == holder),
                sum(c.size for (h, _), c in storage.charges.items() if h == holder),
            )

    def anonymous_usage(self) -> Usage:
        with self._lock:
            storage = self._s.storage
            return Usage(
                sum(p.size for p in storage.partials.values() if p.anonymous),
                sum(c.size for c in storage.charges.values() if c.anonymous),
            )

    def stale_blobs(self, before: float, limit: int = 1000) -> list[tuple[str, int]]:
        with self._lock:
            found = [
                (at, d, size) for d, (size, at) in self._s.storage.blobs.items() if at < before
            ]
            return [(d, size) for _, d, size in sorted(found)[:limit]]

    def blob_uses(self, digests: list[str], before: float) -> list[str]:
        with self._lock:
            blobs = self._s.storage.blobs
            return sorted(d for d in set(digests) if d in blobs and blobs[d][1] < before)

    def drop_blobs(self, digests: list[str]) -> set[str]:
        with self._lock:
            gone = set(digests)
            storage = self._s.storage
            inline = gone & storage.inline_only & storage.blobs.keys()
            for digest in gone:
                storage.blobs.pop(digest, None)
                self._s.inline_blobs.pop(digest, None)
            storage.inline_only -= gone
            storage.charges = {k: c for k, c in storage.charges.items() if k[1] not in gone}
            self._s.blob_owners = {o for o in self._s.blob_owners if o[0] not in gone}
            return inline

    def expire_charges(self, before: float) -> int:
        with self._lock:
            storage = self._s.storage
            kept = {k: c for k, c in storage.charges.items() if c.charged_at >= before}
            expired = len(storage.charges) - len(kept)
            storage.charges = kept
            return expired

    # what jobs still need

    def live_jobs(self, finished_after: float) -> dict[str, LiveJob]:
        with self._lock:
            return {
                job.id: LiveJob(job.created_at, set(job.inputs.values()))
                for job in self._s.jobs.values()
                if job.state in _LIVE
                or (job.finished_at is not None and job.finished_at >= finished_after)
            }

    def task_blob_refs(
        self, job_id: str, after_index: int = -1, limit: int = 1000
    ) -> tuple[set[str], int | None]:
        with self._lock:
            tasks = [self._s.tasks[i] for i in self._s.job_tasks.get(job_id, [])]
            page = [t for t in tasks if t.index > after_index][:limit]
            if not page:
                return set(), None
            ids = {t.id for t in page}
            found = {ref.digest for t in page for ref in t.inputs + t.outputs}
            found |= {
                ref.digest
                for replica in self._s.replicas.values()
                if replica.task_id in ids
                for ref in replica.outputs
            }
            return found, page[-1].index if len(page) == limit else None

    # nodes that never worked

    def idle_nodes(self, seen_before: float, limit: int = 1000) -> list[str]:
        with self._lock:
            s = self._s
            worked = {a.node_id for a in s.attempts.values()}
            paid = {e.account for e in s.entries}
            idle = [
                (n.last_seen, n.id)
                for n in s.nodes.values()
                if n.last_seen < seen_before
                and n.id not in worked
                and node_account(n.id) not in paid
                and _undecided(s.reputations.get(n.id))
            ]
            return [node_id for _, node_id in sorted(idle)[:limit]]

    def delete_nodes(self, node_ids: list[str]) -> None:
        with self._lock:
            for node_id in node_ids:
                self._s.nodes.pop(node_id, None)
                rep = self._s.reputations.get(node_id)
                if rep is not None and rep.standing == Standing.PENDING:
                    del self._s.reputations[node_id]


def _undecided(reputation: Reputation | None) -> bool:
    """No standing, or only `pending`: nothing the operator or the node's results set."""
    return reputation is None or reputation.standing == Standing.PENDING
