"""Time windows in which a node may work, e.g. "mon-fri 22:00-07:00" and "sat-sun".

A window is optional days (`mon`, `mon-fri`, `sat,sun`; default every day) and an optional
`HH:MM-HH:MM` range (default the whole day). A range that ends at or before its start runs
past midnight and belongs to the day it starts on. Times are the machine's local time.
"""

import math
import re
from dataclasses import dataclass
from datetime import datetime, time, timedelta

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_RANGE = re.compile(r"^(\d{1,2}):(\d{2})-(\d{1,2}):(\d{2})$")
_HORIZON_DAYS = 9  # windows repeat weekly: looking a week and a bit ahead finds every edge


class WindowError(ValueError):
    """A window is written wrongly; the message says how to write it."""


@dataclass(frozen=True)
class TimeWindow:
    days: frozenset[int]  # 0 = Monday
    start: time
    end: time  # equal to start: the whole day
    text: str

    def intervals(self, day: datetime) -> list[tuple[datetime, datetime]]:
        """The concrete [start, end) this window has, if any, starting on `day`'s date."""
        if day.weekday() not in self.days:
            return []
        begin = datetime.combine(day.date(), self.start)
        end = datetime.combine(day.date(), self.end)
        if end <= begin:
            end += timedelta(days=1)
        return [(begin, end)]


class Windows:
    """Several windows; no windows at all means always open."""

    def __init__(self, windows: tuple[TimeWindow, ...] = ()) -> None:
        self.windows = windows

    def __bool__(self) -> bool:
        return bool(self.windows)

    def describe(self) -> str:
        return ", ".join(w.text for w in self.windows) or "always"

    def _merged(self, now: datetime) -> list[tuple[datetime, datetime]]:
        first = datetime.combine(now.date(), time()) - timedelta(days=1)
        spans = sorted(
            span
            for offset in range(_HORIZON_DAYS)
            for window in self.windows
            for span in window.intervals(first + timedelta(days=offset))
        )
        merged: list[tuple[datetime, datetime]] = []
        for begin, end in spans:
            if merged and begin <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
            else:
                merged.append((begin, end))
        return merged

    def seconds_left(self, now: datetime) -> float:
        """Seconds until the window that is open now closes; 0 if closed; inf if always open."""
        if not self.windows:
            return math.inf
        for begin, end in self._merged(now):
            if begin <= now < end:
                if end - now >= timedelta(days=_HORIZON_DAYS - 2):
                    return math.inf  # open all week
                return (end - now).total_seconds()
        return 0.0

    def seconds_until_open(self, now: datetime) -> float:
        """0 if open now; else seconds until the next window opens (inf if none ever does)."""
        if self.seconds_left(now) > 0:
            return 0.0
        for begin, _ in self._merged(now):
            if begin > now:
                return (begin - now).total_seconds()
        return math.inf


def parse_windows(texts: list[str] | tuple[str, ...]) -> Windows:
    """Parses each window; raises WindowError naming the first bad one."""
    return Windows(tuple(parse_window(t) for t in texts))


def parse_window(text: str) -> TimeWindow:
    parts = text.strip().lower().split()
    if not parts or len(parts) > 2:
        raise WindowError(_bad(text, "write DAYS, HH:MM-HH:MM or DAYS HH:MM-HH:MM"))
    days: frozenset[int] = frozenset(range(7))
    start = end = time(0, 0)
    if len(parts) == 2 or ":" not in parts[0]:
        days = _days(parts[0], text)
    if ":" in parts[-1]:
        start, end = _range(parts[-1], text)
    elif len(parts) == 2:
        raise WindowError(_bad(text, f"{parts[1]!r} is not a time range like 22:00-07:00"))
    return TimeWindow(days, start, end, text.strip())


def _days(spec: str, text: str) -> frozenset[int]:
    chosen: set[int] = set()
    for item in spec.split(","):
        first, _, last = item.partition("-")
        if first not in DAYS or (last and last not in DAYS):
            raise WindowError(_bad(text, f"days are {', '.join(DAYS)}, e.g. mon-fri or sat,sun"))
        a, b = DAYS.index(first), DAYS.index(last or first)
        chosen.update(range(a, b + 1) if a <= b else [*range(a, 7), *range(0, b + 1)])
    return frozenset(chosen)


def _range(spec: str, text: str) -> tuple[time, time]:
    match = _RANGE.match(spec)
    if not match:
        raise WindowError(_bad(text, f"{spec!r} is not a time range like 22:00-07:00"))
    h1, m1, h2, m2 = (int(g) for g in match.groups())
    if not (h1 <= 24 and h2 <= 24 and m1 < 60 and m2 < 60):
        raise WindowError(_bad(text, "hours are 00-24 and minutes 00-59"))
    return _time(h1, m1, text), _time(h2, m2, text)


def _time(hour: int, minute: int, text: str) -> time:
    if hour == 24:
        if minute:
            raise WindowError(_bad(text, "24:MM is only valid as 24:00"))
        return time(0, 0)
    return time(hour, minute)


def _bad(text: str, how: str) -> str:
    return f"time window {text!r} is not valid: {how}"
