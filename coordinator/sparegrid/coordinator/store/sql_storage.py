"""The SQL store's storage bookkeeping: upload quotas, blobs by last use, idle nodes.

Kept apart from sql.py and sql_ledger.py, which hold the records the scheduler and the
ledger work on; these are read and written by uploads and by the coordinator's background
sweeps.
"""

import json
from collections.abc import Iterable

from sparegrid.coordinator.domain import JobState, Standing, node_account
from sparegrid.coordinator.store.base import ANONYMOUS_POOL, LiveJob, Usage
from sparegrid.coordinator.store.engine import SqlEngine, chunks, marks

_LIVE = (JobState.QUEUED.value, JobState.RUNNING.value)
_PENDING = Standing.PENDING.value


def _digests(texts: Iterable[str]) -> set[str]:
    """Digests of the file references in JSON lists of {name, digest, size}."""
    return {ref["digest"] for text in texts for ref in json.loads(text)}


class _Deltas:
    """Changes to holders' totals, the anonymous pool's included, written at once."""

    def __init__(self) -> None:
        self.by_holder: dict[str, list[int]] = {}

    def add(self, holder: str, anonymous: bool, in_flight: int = 0, stored: int = 0) -> None:
        for key in (holder, ANONYMOUS_POOL) if anonymous else (holder,):
            totals = self.by_holder.setdefault(key, [0, 0])
            totals[0] += in_flight
            totals[1] += stored

    def rows(self) -> list[tuple[str, int, int]]:
        return [(h, f, s) for h, (f, s) in sorted(self.by_holder.items()) if f or s]


class SqlStorage(SqlEngine):
    # unfinished uploads

    def put_partial(
        self, uploader: str, digest: str, holder: str, anonymous: bool, size: int, now: float
    ) -> None:
        deltas = _Deltas()
        deltas.add(holder, anonymous, in_flight=size)
        with self._atomic():
            for old_holder, old_anonymous, old_size in self._query(
                "SELECT holder, anonymous, size FROM partial_uploads"
                " WHERE uploader = ? AND digest = ?",
                (uploader, digest),
            ):
                deltas.add(old_holder, bool(old_anonymous), in_flight=-int(old_size))
            self._run(
                "INSERT INTO partial_uploads (uploader, digest, holder, anonymous, size,"
                " updated_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (uploader, digest) DO UPDATE"
                " SET holder = excluded.holder, anonymous = excluded.anonymous,"
                " size = excluded.size, updated_at = excluded.updated_at",
                (uploader, digest, holder, anonymous, size, now),
            )
            self._add_usage(deltas)

    def drop_partials(self, keys: list[tuple[str, str]]) -> None:
        deltas = _Deltas()
        with self._atomic():
            for uploader, digest in keys:
                for holder, anonymous, size in self._query(
                    "DELETE FROM partial_uploads WHERE uploader = ? AND digest = ?"
                    " RETURNING holder, anonymous, size",
                    (uploader, digest),
                ):
                    deltas.add(holder, bool(anonymous), in_flight=-int(size))
            self._add_usage(deltas)

    def stale_partials(self, before: float, limit: int = 1000) -> list[tuple[str, str]]:
        with self._atomic():
            rows = self._query(
                "SELECT uploader, digest FROM partial_uploads WHERE updated_at < ?"
                " ORDER BY updated_at, uploader, digest LIMIT ?",
                (before, limit),
            )
        return [(uploader, digest) for uploader, digest in rows]

    # blobs and their charges

    def record_blob(
        self, digest: str, size: int, now: float, holder: str = "", anonymous: bool = False
    ) -> None:
        with self._atomic():
            self._run(
                "INSERT INTO blobs (digest, size, used_at) VALUES (?, ?, ?)"
                " ON CONFLICT (digest) DO UPDATE SET size = excluded.size,"
                " used_at = CASE WHEN blobs.used_at > excluded.used_at THEN blobs.used_at"
                " ELSE excluded.used_at END, kept_inline = FALSE",
                (digest, size, now),
            )
            if holder:
                self._charge(holder, anonymous, {digest: size}, now)

    def put_inline_blobs(
        self,
        blobs: dict[str, bytes],
        now: float,
        holder: str = "",
        anonymous: bool = False,
        fresh: set[str] | None = None,
    ) -> None:
        if not blobs:
            return
        sizes = {digest: len(data) for digest, data in sorted(blobs.items())}
        with self._atomic():
            self._run_many(
                "INSERT INTO inline_blobs (digest, data) VALUES (?, ?)"
                " ON CONFLICT (digest) DO NOTHING",
                sorted(blobs.items()),
            )
            self._run_many(  # a blob stored as a file too stays one (kept_inline false)
                "INSERT INTO blobs (digest, size, used_at, kept_inline) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (digest) DO UPDATE SET"
                " used_at = CASE WHEN blobs.used_at > excluded.used_at THEN blobs.used_at"
                " ELSE excluded.used_at END",
                [(digest, size, now, True) for digest, size in sizes.items()],
            )
            if holder:
                self._charge(holder, anonymous, sizes, now, fresh)

    def _charge(
        self,
        holder: str,
        anonymous: bool,
        sizes: dict[str, int],
        now: float,
        fresh: set[str] | None = None,
    ) -> None:
        """Charges the holder each blob's size from now, once per blob (a charge it has of
        the blob is renewed). What it adds is read from its charges, unless the caller says
        which blobs are `fresh` (an empty one adds nothing either way)."""
        deltas = _Deltas()
        if fresh is not None:
            for digest, size in sizes.items():
                if digest in fresh:
                    deltas.add(holder, anonymous, stored=size)
        else:
            for size in sizes.values():
                deltas.add(holder, anonymous, stored=size)
            for old_anonymous, old_size in self._query_in(
                "SELECT anonymous, size FROM blob_charges WHERE holder = ? AND digest IN (*)",
                [digest for digest, size in sizes.items() if size],
                (holder,),
            ):
                deltas.add(holder, bool(old_anonymous), stored=-int(old_size))
        self._run_many(
            "INSERT INTO blob_charges (holder, digest, anonymous, size, charged_at)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (holder, digest) DO UPDATE"
            " SET anonymous = excluded.anonymous, size = excluded.size,"
            " charged_at = excluded.charged_at",
            [(holder, digest, anonymous, size, now) for digest, size in sizes.items()],
        )
        self._add_usage(deltas)

    def charged(self, holder: str, digests: list[str]) -> set[str]:
        with self._atomic():
            rows = self._query_in(
                "SELECT digest FROM blob_charges WHERE holder = ? AND digest IN (*)",
                digests,
                (holder,),
            )
        return {row[0] for row in rows}

    def adopt_blobs(self, blobs: list[tuple[str, int, float]]) -> int:
        found = {digest: (digest, size, used_at) for digest, size, used_at in blobs}
        with self._atomic():
            known = {
                row[0]
                for row in self._query_in(
                    "SELECT digest FROM blobs WHERE digest IN (*)", list(found)
                )
            }
            fresh = [row for digest, row in found.items() if digest not in known]
            self._run_many("INSERT INTO blobs (digest, size, used_at) VALUES (?, ?, ?)", fresh)
            for chunk in chunks(sorted(known)):  # kept inline, and found as a file too
                self._run(
                    "UPDATE blobs SET kept_inline = FALSE WHERE kept_inline"
                    f" AND digest IN ({marks(len(chunk))})",
                    chunk,
                )
        return len(fresh)

    def usage(self, holder: str) -> Usage:
        with self._atomic():
            rows = self._query(
                "SELECT in_flight, stored FROM upload_usage WHERE holder = ?", (holder,)
            )
        return Usage(int(rows[0][0]), int(rows[0][1])) if rows else Usage(0, 0)

    def anonymous_usage(self) -> Usage:
        return self.usage(ANONYMOUS_POOL)

    def _add_usage(self, deltas: _Deltas) -> None:
        rows = deltas.rows()
        self._run_many(
            "INSERT INTO upload_usage (holder, in_flight, stored) VALUES (?, ?, ?)"
            " ON CONFLICT (holder) DO UPDATE SET"
            " in_flight = upload_usage.in_flight + excluded.in_flight,"
            " stored = upload_usage.stored + excluded.stored",
            rows,
        )
        for chunk in chunks([holder for holder, _, _ in rows]):
            self._run(
                "DELETE FROM upload_usage WHERE in_flight = 0 AND stored = 0"
                f" AND holder IN ({marks(len(chunk))})",
                chunk,
            )

    def stale_blobs(self, before: float, limit: int = 1000) -> list[tuple[str, int]]:
        with self._atomic():
            rows = self._query(
                "SELECT digest, size FROM blobs WHERE used_at < ? ORDER BY used_at, digest LIMIT ?",
                (before, limit),
            )
        return [(digest, int(size)) for digest, size in rows]

    def blob_uses(self, digests: list[str], before: float) -> list[str]:
        with self._atomic():
            rows = self._query_in(
                "SELECT digest FROM blobs WHERE used_at < ? AND digest IN (*)", digests, (before,)
            )
        return sorted(row[0] for row in rows)

    def drop_blobs(self, digests: list[str]) -> set[str]:
        deltas = _Deltas()
        inline: set[str] = set()
        with self._atomic():
            for chunk in chunks(digests):
                where = f"digest IN ({marks(len(chunk))})"
                for holder, anonymous, size in self._query(
                    f"DELETE FROM blob_charges WHERE {where} RETURNING holder, anonymous, size",
                    chunk,
                ):
                    deltas.add(holder, bool(anonymous), stored=-int(size))
                inline.update(
                    row[0]
                    for row in self._query(
                        f"DELETE FROM blobs WHERE {where} RETURNING digest, kept_inline", chunk
                    )
                    if row[1]
                )
                self._run(f"DELETE FROM blob_owners WHERE {where}", chunk)
                self._run(f"DELETE FROM inline_blobs WHERE {where}", chunk)
            self._add_usage(deltas)
        return inline

    def expire_charges(self, before: float) -> int:
        deltas = _Deltas()
        with self._atomic():
            expired = self._query(
                "DELETE FROM blob_charges WHERE charged_at < ? RETURNING holder, anonymous, size",
                (before,),
            )
            for holder, anonymous, size in expired:
                deltas.add(holder, bool(anonymous), stored=-int(size))
            self._add_usage(deltas)
        return len(expired)

    # what jobs still need

    def live_jobs(self, finished_after: float) -> dict[str, LiveJob]:
        with self._atomic():
            rows = self._query(
                f"SELECT id, created_at, inputs FROM jobs WHERE state IN ({marks(len(_LIVE))})"
                " OR finished_at >= ?",
                (*_LIVE, finished_after),
            )
        return {
            job_id: LiveJob(float(created_at), set(json.loads(inputs).values()))
            for job_id, created_at, inputs in rows
        }

    def task_blob_refs(
        self, job_id: str, after_index: int = -1, limit: int = 1000
    ) -> tuple[set[str], int | None]:
        with self._atomic():
            rows = self._query(
                "SELECT idx, inputs, outputs FROM tasks WHERE job_id = ? AND idx > ?"
                " ORDER BY idx LIMIT ?",
                (job_id, after_index, limit),
            )
            if not rows:
                return set(), None
            last = int(rows[-1][0])
            replicas = self._query(
                "SELECT r.outputs FROM replicas r JOIN tasks t ON t.id = r.task_id"
                " WHERE t.job_id = ? AND t.idx > ? AND t.idx <= ?",
                (job_id, after_index, last),
            )
        found = _digests(text for row in rows for text in row[1:])
        found |= _digests(row[0] for row in replicas)
        return found, last if len(rows) == limit else None

    # nodes that never worked

    def idle_nodes(self, seen_before: float, limit: int = 1000) -> list[str]:
        with self._atomic():
            rows = self._query(
                "SELECT n.id FROM nodes n WHERE n.last_seen < ?"
                " AND NOT EXISTS (SELECT 1 FROM attempts a WHERE a.node_id = n.id)"
                " AND NOT EXISTS (SELECT 1 FROM entries e WHERE e.account = ? || n.id)"
                " AND NOT EXISTS (SELECT 1 FROM reputations r WHERE r.node_id = n.id"
                " AND r.standing <> ?) ORDER BY n.last_seen, n.id LIMIT ?",
                (seen_before, node_account(""), _PENDING, limit),
            )
        return [row[0] for row in rows]

    def delete_nodes(self, node_ids: list[str]) -> None:
        with self._atomic():
            for chunk in chunks(node_ids):
                self._run(f"DELETE FROM nodes WHERE id IN ({marks(len(chunk))})", chunk)
                self._run(
                    f"DELETE FROM reputations WHERE standing = ? AND node_id IN"
                    f" ({marks(len(chunk))})",
                    (_PENDING, *chunk),
                )
