"""Credit this node has earned, as the coordinator reported it in its acks: today and in
total, kept in DATA_DIR/earnings.json so a restart does not forget it."""

import contextlib
import json
import os
from collections.abc import Callable
from datetime import datetime
from pathlib import Path


class Earnings:
    def __init__(self, path: Path, now: Callable[[], datetime]) -> None:
        self.path = path
        self._now = now
        self.day = ""
        self.today = 0
        self.total = 0
        self.results = 0
        with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
            raw = json.loads(path.read_text())
            self.day, self.today = str(raw["day"]), int(raw["today"])
            self.total, self.results = int(raw["total"]), int(raw["results"])

    def _roll(self) -> None:
        day = self._now().date().isoformat()
        if day != self.day:
            self.day, self.today = day, 0

    def add(self, credit: int, results: int = 1) -> None:
        self._roll()
        self.today += credit
        self.total += credit
        self.results += results
        self._save()

    def snapshot(self) -> dict[str, int | str]:
        self._roll()
        return {"today": self.today, "total": self.total, "results": self.results, "day": self.day}

    def _save(self) -> None:
        data = {"day": self.day, "today": self.today, "total": self.total, "results": self.results}
        tmp = self.path.with_suffix(".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(data))
            os.replace(tmp, self.path)
        except OSError:
            pass  # the tally is a convenience; the coordinator's ledger is the record
