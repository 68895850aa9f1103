"""The SQL store's invitation codes; a use is counted by one conditional UPDATE."""

from typing import Any

from sparegrid.coordinator.domain import Invite
from sparegrid.coordinator.store.base import Conflict
from sparegrid.coordinator.store.engine import SqlEngine

_COLUMNS = "id, code_hash, uses, credit, note, created_at, expires_at, used, revoked"


def _invite(row: Any) -> Invite:
    return Invite(
        id=row[0],
        code_hash=row[1],
        uses=int(row[2]),
        credit=int(row[3]),
        note=row[4],
        created_at=float(row[5]),
        expires_at=float(row[6]),
        used=int(row[7]),
        revoked=bool(row[8]),
    )


class SqlInvites(SqlEngine):
    def add_invite(self, invite: Invite) -> None:
        with self._atomic():
            taken = self._query(
                "SELECT id FROM invites WHERE id = ? OR code_hash = ?",
                (invite.id, invite.code_hash),
            )
            if taken:
                raise Conflict(f"invitation {invite.id!r} (or its code) exists already")
            with self._conflicts(f"invitation {invite.id!r} is taken"):
                self._run(
                    f"INSERT INTO invites ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        invite.id,
                        invite.code_hash,
                        invite.uses,
                        invite.credit,
                        invite.note,
                        invite.created_at,
                        invite.expires_at,
                        invite.used,
                        invite.revoked,
                    ),
                )

    def get_invite(self, invite_id: str) -> Invite | None:
        return self._invite_where("id = ?", invite_id)

    def find_invite(self, code_hash: str) -> Invite | None:
        return self._invite_where("code_hash = ?", code_hash)

    def _invite_where(self, condition: str, value: str) -> Invite | None:
        with self._atomic():
            rows = self._query(f"SELECT {_COLUMNS} FROM invites WHERE {condition}", (value,))
        return _invite(rows[0]) if rows else None

    def list_invites(self) -> list[Invite]:
        with self._atomic():
            rows = self._query(f"SELECT {_COLUMNS} FROM invites ORDER BY created_at DESC, id")
        return [_invite(row) for row in rows]

    def revoke_invite(self, invite_id: str) -> None:
        with self._atomic():
            self._run("UPDATE invites SET revoked = ? WHERE id = ?", (True, invite_id))

    def use_invite(self, code_hash: str, now: float) -> bool:
        # One statement: PostgreSQL makes a second UPDATE of the row wait for the first and
        # then evaluates the condition again on the row the first one left.
        with self._atomic():
            changed = self._count(
                "UPDATE invites SET used = used + 1 WHERE code_hash = ? AND revoked = ?"
                " AND used < uses AND (expires_at = 0 OR expires_at > ?)",
                (code_hash, False, now),
            )
        return changed == 1
