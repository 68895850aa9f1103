"""The volunteer's manual pause (`sparegrid worker pause|snooze|resume`), kept on disk.

While paused, the policy treats every device as the owner's: running tasks are preempted,
nothing new is leased. A pause lasts until a wall-clock time or until `worker resume`;
it is saved in DATA_DIR/pause.json so a restarted daemon keeps it.
"""

import json
import logging
import math
from datetime import datetime
from pathlib import Path
from typing import Any

from sparegrid.wire.clock import Clock
from sparegrid.worker.fsutil import write_atomic

_log = logging.getLogger("sparegrid.worker.policy")
MAX_PAUSE_SECONDS = 366 * 86400.0  # longer than this is a mistake, not a pause
RESUME_HINT = "`sparegrid worker resume`"


class PauseError(ValueError):
    """A pause that cannot be set; the message says what was wrong."""


def check_seconds(seconds: object) -> float | None:
    """A pause length from the wire or a flag: a positive number of seconds, or None."""
    if seconds is None:
        return None
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise PauseError("the pause length must be a number of seconds or null")
    if not math.isfinite(seconds) or seconds <= 0:
        raise PauseError("the pause length must be more than 0 seconds")
    if seconds > MAX_PAUSE_SECONDS:
        raise PauseError("the pause length must be at most 366 days")
    return float(seconds)


class ManualPause:
    """Paused or not, and until when (epoch seconds; None: until resumed)."""

    def __init__(self, path: Path, clock: Clock) -> None:
        self.path = path
        self._clock = clock
        self.paused = False
        self.until: float | None = None
        self._load()

    def _load(self) -> None:
        try:
            saved = json.loads(self.path.read_text())
            until = saved["until"]
            number = isinstance(until, int | float) and not isinstance(until, bool)
            if until is not None and not (number and math.isfinite(until)):
                raise ValueError("until is not a time")
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError) as exc:
            _log.warning("ignoring the unreadable pause file %s (%s)", self.path, exc)
            return
        self.paused, self.until = True, None if until is None else float(until)
        if self.reason():
            _log.warning("paused by the volunteer %s (kept across the restart)", self.describe())

    def pause(self, seconds: float | None) -> None:
        """Pauses for `seconds` from now, or until resumed; replaces any pause in force."""
        seconds = check_seconds(seconds)
        until = None if seconds is None else self._clock.now() + seconds
        write_atomic(self.path, json.dumps({"until": until}).encode())
        self.paused, self.until = True, until
        _log.warning("paused by the volunteer %s", self.describe())

    def resume(self) -> bool:
        """Lifts the pause; False if there was none."""
        was = self.paused
        self.path.unlink(missing_ok=True)
        self.paused, self.until = False, None
        if was:
            _log.warning("the volunteer's pause is lifted")
        return was

    def reason(self) -> str:
        """Why the devices are paused, or "" (a pause whose time has come ends here)."""
        if not self.paused:
            return ""
        if self.until is not None and self._clock.now() >= self.until:
            self.path.unlink(missing_ok=True)
            self.paused, self.until = False, None
            _log.warning("the volunteer's pause ended")
            return ""
        return self.describe()

    def describe(self) -> str:
        if self.until is None:
            return f"until {RESUME_HINT}"
        until = datetime.fromtimestamp(self.until)
        now = datetime.fromtimestamp(self._clock.now())
        shown = until.strftime("%H:%M" if until.date() == now.date() else "%a %d %b %H:%M")
        return f"until {shown}, or {RESUME_HINT}"  # one level of brackets in `worker status`

    def snapshot(self) -> dict[str, Any] | None:
        """For `worker status`: None, or until when (ISO local time; None: until resumed)."""
        if not self.reason():
            return None
        until = self.until
        return {
            "until": None
            if until is None
            else datetime.fromtimestamp(until).isoformat("T", "seconds"),
            "reason": self.describe(),
        }
