"""Flow control: how many more assignments the worker invites per device.

The protocol calls an invitation `Credit` (a count of assignments the coordinator may
send); it has nothing to do with the money-like credit in the ledger.

The worker keeps a window of tasks per device in hand or invited: held (fetching, queued
or running) plus credit granted in this session and not yet used. A new session starts
with no credit, so its first grant is the window less what the worker still holds.

The window is `--prefetch` when that is set. By default it adapts, as a TCP window does
to its path: it covers the round trip (from granting credit to the assignment arriving)
twice over at the rate the device finishes tasks, so a device never waits on the link,
and a link with a 300 ms round trip still keeps a device of tiny tasks busy; a device of
long tasks holds only the one it runs and the next.
"""

import math
from collections import deque
from collections.abc import Iterable

ADAPTIVE_START = 2  # before anything is measured
ADAPTIVE_MIN = 2  # the task running and the next one, its inputs fetched meanwhile
ADAPTIVE_MAX = 1024
HEADROOM = 2.0  # round trips' worth of tasks kept in hand (jitter, batching)
_RTT_SAMPLES = 32  # the round trip is the least of the last samples (waits for work inflate some)
_TASK_WEIGHT = 0.2  # how fast the task-time average follows a change


class FlowWindow:
    def __init__(self, prefetch: int | None, devices: Iterable[int]) -> None:
        self._fixed = prefetch
        self._outstanding = dict.fromkeys(devices, 0)
        self._granted = {device: deque[list[float]]() for device in self._outstanding}
        self._rtts: deque[float] = deque(maxlen=_RTT_SAMPLES)
        self._task: dict[int, float] = {}

    def reset(self) -> None:
        """A new session: the coordinator knows of no credit yet."""
        for device in self._outstanding:
            self._outstanding[device] = 0
            self._granted[device].clear()

    def revoke(self, device: int) -> None:
        """The device paused: the coordinator was told its credit is now 0."""
        if device in self._outstanding:
            self._outstanding[device] = 0
            self._granted[device].clear()

    def assigned(self, device: int, now: float | None = None) -> None:
        """An assignment used one unit of the device's credit; `now` (monotonic) times the
        round trip from the grant it answers."""
        if self._outstanding.get(device, 0) > 0:
            self._outstanding[device] -= 1
        granted = self._granted.get(device)
        if granted:
            oldest = granted[0]
            if now is not None:
                self._rtts.append(max(now - oldest[0], 0.0))
            oldest[1] -= 1
            if oldest[1] <= 0:
                granted.popleft()

    def finished(self, device: int, seconds: float) -> None:
        """A task occupied the device for `seconds` (from when it started or the previous
        one ended, whichever is later): what a task costs there."""
        if seconds < 0:
            return
        last = self._task.get(device)
        self._task[device] = seconds if last is None else last + _TASK_WEIGHT * (seconds - last)

    @property
    def round_trip(self) -> float | None:
        return min(self._rtts) if self._rtts else None

    def window(self, device: int) -> int:
        """Tasks to keep in hand or invited for the device."""
        if self._fixed is not None:
            return self._fixed
        rtt, task = self.round_trip, self._task.get(device)
        if rtt is None or task is None:
            return ADAPTIVE_START
        wanted = math.ceil(HEADROOM * rtt / max(task, 1e-6) - 1e-9) + 1  # float noise
        return min(max(wanted, ADAPTIVE_MIN), ADAPTIVE_MAX)

    def top_up(self, device: int, held: int, now: float = 0.0) -> int:
        """How much credit to grant now so held + outstanding reaches the window."""
        if device not in self._outstanding:
            return 0
        window = self.window(device)
        grant = max(window - held - self._outstanding[device], 0)
        if grant < max(1, window // 4):
            return 0  # a deep window is refilled in quarters: fewer, larger assignments
        self._outstanding[device] += grant
        self._granted[device].append([now, float(grant)])
        return grant
