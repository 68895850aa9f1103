"""This node's credit: the figure the coordinator's ledger holds for it (its Welcome and
Credited messages), the same one `worker credit` and `admin nodes` show, never a tally
of our own. Today's part is that figure less what it was when the day began here. Kept
in DATA_DIR/earnings.json so `worker status` shows the last figure heard before the
worker connects again. Written at most once a second while the worker runs (a figure
comes with every batch's acknowledgement), and when it stops."""

import asyncio
import contextlib
import json
import os
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

SAVE_SECONDS = 1.0  # the most the file lags the figures while an event loop runs


class Earnings:
    def __init__(self, path: Path, now: Callable[[], datetime]) -> None:
        self.path = path
        self._now = now
        self.day = ""
        self.total = 0  # the coordinator's ledger, as last heard
        self.day_start = 0  # the ledger figure when `day` began
        self.accepted = 0  # results the coordinator took in (paid at once or once validated)
        self._due: asyncio.TimerHandle | None = None  # the save after a change
        with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
            raw = json.loads(path.read_text())
            self.day, self.total = str(raw["day"]), int(raw["total"])
            self.day_start = int(raw.get("day_start", self.total))
            self.accepted = int(raw.get("accepted", 0))

    @property
    def today(self) -> int:
        self._roll()
        return self.total - self.day_start

    def _roll(self) -> None:
        day = self._now().date().isoformat()
        if self.day and day != self.day:
            self.day, self.day_start = day, self.total

    def credited(self, total: int) -> None:
        """The coordinator says the ledger holds `total` for this node."""
        self._roll()
        if not self.day:  # the first figure heard: what came before is not today's
            self.day, self.day_start = self._now().date().isoformat(), total
        elif total < self.day_start:  # another coordinator, or its ledger restored
            self.day_start = total
        self.total = total
        self._changed()

    def took(self, results: int) -> None:
        """The coordinator accepted `results` more results of this node."""
        self.accepted += results
        self._changed()

    def snapshot(self) -> dict[str, int | str]:
        return {
            "today": self.today,
            "total": self.total,
            "accepted": self.accepted,
            "day": self.day,
        }

    def _changed(self) -> None:
        """Saves soon (at once when no event loop runs)."""
        if self._due is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._save()
            return
        self._due = loop.call_later(SAVE_SECONDS, self.flush)

    def flush(self) -> None:
        """Saves a change not yet saved (the worker calls it as it stops)."""
        if self._due is not None:
            self._due.cancel()
            self._due = None
            self._save()

    def _save(self) -> None:
        data = {
            "day": self.day,
            "total": self.total,
            "day_start": self.day_start,
            "accepted": self.accepted,
        }
        tmp = self.path.with_suffix(".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(data))
            os.replace(tmp, self.path)
        except OSError:
            pass  # a copy for display; the coordinator's ledger is the record
