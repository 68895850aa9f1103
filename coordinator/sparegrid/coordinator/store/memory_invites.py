"""The in-memory store's invitation codes, as sql_invites.py keeps them in SQL."""

import copy
import threading
from typing import TYPE_CHECKING

from sparegrid.coordinator.domain import Invite
from sparegrid.coordinator.store.base import Conflict

if TYPE_CHECKING:
    from sparegrid.coordinator.store.memory_state import _State


class MemoryInvites:
    _lock: threading.RLock
    _s: "_State"

    def add_invite(self, invite: Invite) -> None:
        with self._lock:
            invites = self._s.invites
            if invite.id in invites or any(
                i.code_hash == invite.code_hash for i in invites.values()
            ):
                raise Conflict(f"invitation {invite.id!r} (or its code) exists already")
            invites[invite.id] = copy.deepcopy(invite)

    def get_invite(self, invite_id: str) -> Invite | None:
        with self._lock:
            return copy.deepcopy(self._s.invites.get(invite_id))

    def find_invite(self, code_hash: str) -> Invite | None:
        with self._lock:
            found = [i for i in self._s.invites.values() if i.code_hash == code_hash]
            return copy.deepcopy(found[0]) if found else None

    def list_invites(self) -> list[Invite]:
        with self._lock:
            invites = sorted(self._s.invites.values(), key=lambda i: (-i.created_at, i.id))
            return copy.deepcopy(invites)

    def revoke_invite(self, invite_id: str) -> None:
        with self._lock:
            invite = self._s.invites.get(invite_id)
            if invite is not None:
                invite.revoked = True

    def use_invite(self, code_hash: str, now: float) -> bool:
        with self._lock:
            for invite in self._s.invites.values():
                if invite.code_hash != code_hash:
                    continue
                if invite.revoked or invite.used >= invite.uses:
                    return False
                if invite.expires_at and invite.expires_at <= now:
                    return False
                invite.used += 1
                return True
            return False
