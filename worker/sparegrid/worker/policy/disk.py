"""Room on the disk that holds the worker's data directory.

Results wait there (the outbox) until the coordinator acknowledges them, and inputs are
cached there. With the disk nearly full the worker would take tasks, run them and then
fail to keep their results, so each one's lease would run out before anyone else got the
task. Below `--min-free-disk` of free space, and for a while after a write failed for want
of room, every device is paused: running tasks are handed back (a failure that small still
fits), no new ones are invited, and work resumes by itself once there is room again.
"""

import errno
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from sparegrid.wire.clock import Clock
from sparegrid.wire.config import show_size

_log = logging.getLogger("sparegrid.worker.policy.disk")
# A write failed for want of room: paused this long, whatever the disk says meanwhile
# (space may show as free and still not be ours: a quota, reserved blocks).
RETRY_SECONDS = 60.0
NO_ROOM = (errno.ENOSPC, errno.EDQUOT)


class Usage(Protocol):
    @property
    def free(self) -> int: ...


class DiskGuard:
    def __init__(
        self,
        path: Path,
        min_free: int,
        clock: Clock,
        usage: Callable[[Path], Usage] = shutil.disk_usage,
    ) -> None:
        self.path = path
        self.min_free = min_free  # bytes; 0: only failed writes pause
        self._clock = clock
        self._usage = usage
        self._failed_at: float | None = None  # monotonic time of the last write without room
        self._failure = ""

    def reason(self) -> str:
        """Why the devices must pause for want of room, or ""."""
        if self._failed_at is not None:
            left = self._failed_at + RETRY_SECONDS - self._clock.monotonic()
            if left > 0:
                return f"{self._failure}; trying again in {left:.0f}s"
            self._failed_at = None
            _log.warning("trying the disk holding %s again", self.path)
        if self.min_free <= 0:
            return ""
        try:
            free = self._usage(self.path).free
        except OSError:  # unreadable: the writes themselves will tell
            return ""
        if free >= self.min_free:
            return ""
        return (
            f"{show_size(free)} free on the disk holding {self.path}, under --min-free-disk "
            f"{show_size(self.min_free)}: make room, or lower it"
        )

    def failed(self, exc: OSError) -> bool:
        """A write under the data directory failed; True when for want of room (then the
        devices pause for RETRY_SECONDS)."""
        if exc.errno not in NO_ROOM:
            return False
        self._failed_at = self._clock.monotonic()
        self._failure = f"writing under {self.path} failed: {exc.strerror or exc}"
        return True
