"""The SQL store's storage bookkeeping: upload quotas, blobs by last use, idle nodes.

Kept apart from sql.py, which holds the records the scheduler and the ledger work on;
these are read and written by uploads and by the coordinator's background sweeps.
"""

import json
from collections.abc import Iterable

from sparegrid.coordinator.domain import JobState, Standing, node_account
from sparegrid.coordinator.store.base import LiveJob, Usage
from sparegrid.coordinator.store.engine import SqlEngine, chunks, marks

_LIVE = (JobState.QUEUED.value, JobState.RUNNING.value)
_PENDING = Standing.PENDING.value


def _digests(texts: Iterable[str]) -> set[str]:
    """Digests of the file references in JSON lists of {name, digest, size}."""
    return {ref["digest"] for text in texts for ref in json.loads(text)}


class SqlStorage(SqlEngine):
    # unfinished uploads

    def put_partial(
        self, uploader: str, digest: str, holder: str, anonymous: bool, size: int, now: float
    ) -> None:
        with self.transaction():
            self._run(
                "INSERT INTO partial_uploads (uploader, digest, holder, anonymous, size,"
                " updated_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (uploader, digest) DO UPDATE"
                " SET holder = excluded.holder, anonymous = excluded.anonymous,"
                " size = excluded.size, updated_at = excluded.updated_at",
                (uploader, digest, holder, anonymous, size, now),
            )

    def drop_partials(self, keys: list[tuple[str, str]]) -> None:
        with self.transaction():
            self._run_many(
                "DELETE FROM partial_uploads WHERE uploader = ? AND digest = ?", list(keys)
            )

    def stale_partials(self, before: float, limit: int = 1000) -> list[tuple[str, str]]:
        with self.transaction():
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
        with self.transaction():
            self._run(
                "INSERT INTO blobs (digest, size, used_at) VALUES (?, ?, ?)"
                " ON CONFLICT (digest) DO UPDATE SET size = excluded.size,"
                " used_at = CASE WHEN blobs.used_at > excluded.used_at THEN blobs.used_at"
                " ELSE excluded.used_at END",
                (digest, size, now),
            )
            if holder:
                self._run(
                    "INSERT INTO blob_charges (holder, digest, anonymous, size, charged_at)"
                    " VALUES (?, ?, ?, ?, ?) ON CONFLICT (holder, digest) DO UPDATE"
                    " SET size = excluded.size, charged_at = excluded.charged_at",
                    (holder, digest, anonymous, size, now),
                )

    def adopt_blobs(self, blobs: list[tuple[str, int, float]]) -> int:
        found = {digest: (digest, size, used_at) for digest, size, used_at in blobs}
        with self.transaction():
            known = {
                row[0]
                for row in self._query_in(
                    "SELECT digest FROM blobs WHERE digest IN (*)", list(found)
                )
            }
            fresh = [row for digest, row in found.items() if digest not in known]
            self._run_many("INSERT INTO blobs (digest, size, used_at) VALUES (?, ?, ?)", fresh)
        return len(fresh)

    def usage(self, holder: str) -> Usage:
        return self._usage("holder = ?", (holder,))

    def anonymous_usage(self) -> Usage:
        return self._usage("anonymous = ?", (True,))

    def _usage(self, condition: str, params: tuple[object, ...]) -> Usage:
        with self.transaction():
            ((in_flight, stored),) = self._query(
                f"SELECT (SELECT COALESCE(SUM(size), 0) FROM partial_uploads WHERE {condition}),"
                f" (SELECT COALESCE(SUM(size), 0) FROM blob_charges WHERE {condition})",
                params * 2,
            )
        return Usage(int(in_flight), int(stored))

    def stale_blobs(self, before: float, limit: int = 1000) -> list[tuple[str, int]]:
        with self.transaction():
            rows = self._query(
                "SELECT digest, size FROM blobs WHERE used_at < ? ORDER BY used_at, digest LIMIT ?",
                (before, limit),
            )
        return [(digest, int(size)) for digest, size in rows]

    def blob_uses(self, digests: list[str], before: float) -> list[str]:
        with self.transaction():
            rows = self._query_in(
                "SELECT digest FROM blobs WHERE used_at < ? AND digest IN (*)", digests, (before,)
            )
        return sorted(row[0] for row in rows)

    def drop_blobs(self, digests: list[str]) -> None:
        with self.transaction():
            for chunk in chunks(digests):
                for table in ("blobs", "blob_charges", "blob_owners"):
                    self._run(f"DELETE FROM {table} WHERE digest IN ({marks(len(chunk))})", chunk)

    def expire_charges(self, before: float) -> int:
        with self.transaction():
            return self._run("DELETE FROM blob_charges WHERE charged_at < ?", (before,))

    # what jobs still need

    def live_jobs(self, finished_after: float) -> dict[str, LiveJob]:
        with self.transaction():
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
        with self.transaction():
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
        with self.transaction():
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
        with self.transaction():
            for chunk in chunks(node_ids):
                self._run(f"DELETE FROM nodes WHERE id IN ({marks(len(chunk))})", chunk)
                self._run(
                    f"DELETE FROM reputations WHERE standing = ? AND node_id IN"
                    f" ({marks(len(chunk))})",
                    (_PENDING, *chunk),
                )
