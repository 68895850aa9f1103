"""The SQL store's events: appended with a sequence number, read by it, the oldest trimmed."""

import json
from typing import Any

from sparegrid.coordinator.domain import Event
from sparegrid.coordinator.store.engine import SqlEngine, marks

_COLUMNS = "seq, id, at, kind, message, job_id, task_id, node_id, account, data"


def _event(row: Any) -> Event:
    return Event(
        seq=int(row[0]),
        id=row[1],
        at=float(row[2]),
        kind=row[3],
        message=row[4],
        job_id=row[5],
        task_id=row[6],
        node_id=row[7],
        account=row[8],
        data=json.loads(row[9]),
    )


class SqlEvents(SqlEngine):
    def add_events(self, events: list[Event]) -> None:
        if not events:
            return
        with self.transaction():
            self._run_many(
                "INSERT INTO events (id, at, kind, message, job_id, task_id, node_id, account,"
                " data) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        e.id,
                        e.at,
                        e.kind,
                        e.message,
                        e.job_id,
                        e.task_id,
                        e.node_id,
                        e.account,
                        json.dumps(e.data, sort_keys=True, default=str),
                    )
                    for e in events
                ],
            )

    def list_events(
        self,
        after: int = 0,
        limit: int = 100,
        newest: bool = False,
        job_id: str = "",
        node_ids: list[str] | None = None,
        kinds: list[str] | None = None,
    ) -> list[Event]:
        where: list[str] = ["seq > ?"]
        params: list[object] = [after]
        if job_id:
            where.append("job_id = ?")
            params.append(job_id)
        if node_ids is not None:
            if not node_ids:
                return []
            where.append(f"node_id IN ({marks(len(node_ids))})")
            params.extend(node_ids)
        if kinds is not None:
            if not kinds:
                return []
            where.append(f"kind IN ({marks(len(kinds))})")
            params.extend(kinds)
        order = "DESC" if newest else "ASC"
        with self.transaction():
            rows = self._query(
                f"SELECT {_COLUMNS} FROM events WHERE {' AND '.join(where)}"
                f" ORDER BY seq {order} LIMIT ?",
                (*params, limit),
            )
        events = [_event(row) for row in rows]
        return events[::-1] if newest else events

    def trim_events(self, keep: int) -> int:
        with self.transaction():
            rows = self._query(
                "SELECT seq FROM events ORDER BY seq DESC LIMIT 1 OFFSET ?", (max(keep, 0),)
            )
            if not rows:
                return 0
            return self._count("DELETE FROM events WHERE seq <= ?", (int(rows[0][0]),))
