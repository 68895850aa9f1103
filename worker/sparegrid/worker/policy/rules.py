"""The rules that decide, from one reading, whether this node may use a device now.

In order of precedence: the device is disabled; the volunteer paused the node (`sparegrid
worker pause`, until a time or until resumed); the time window is closed; the reading
failed; the owner is using the GPU (another process on it, memory used by others, high
utilization while none of our tasks runs, or, if enabled, keyboard or mouse input within
`input_idle_seconds`); too hot (pause at `max_temp`, resume at
`max_temp - temp_hysteresis`); over the power cap (resume below the cap less
`power_hysteresis`); the owner has not been away for `idle_seconds` yet. Otherwise READY.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

from sparegrid.worker.policy.state import DeviceState
from sparegrid.worker.policy.windows import Windows

MiB = 1 << 20


class Mode(StrEnum):
    READY = "ready"
    WAITING = "idle-waiting"
    OWNER_ACTIVE = "paused: owner active"
    PAUSED = "paused: by the volunteer"
    DISK_LOW = "paused: disk low"
    TOO_HOT = "paused: too hot"
    POWER = "paused: over power cap"
    UNREADABLE = "paused: device unreadable"
    DISABLED = "disabled"
    OUTSIDE_WINDOW = "outside window"


@dataclass(frozen=True)
class PolicySettings:
    enabled: frozenset[int] | None = None  # device indices to use; None: all
    idle_seconds: float = 60.0  # the owner must be away this long before work starts
    max_utilization: float = 10.0  # percent, judged while none of our tasks runs
    max_other_memory: int = 256 * MiB  # bytes others may use on the GPU before it is theirs
    max_temp: float | None = None  # degrees C
    temp_hysteresis: float = 10.0
    power_cap: float | None = None  # watts
    power_hysteresis: float = 0.1  # share of the cap
    max_vram: float = 1.0  # share of the device's memory our tasks may use
    windows: Windows = field(default_factory=Windows)
    input_idle_seconds: float = 0.0  # keyboard/mouse used more recently: owner active (0: off)


@dataclass(frozen=True)
class Decision:
    mode: Mode
    reason: str = ""
    window_left: float = math.inf  # seconds the time window stays open
    over_vram: bool = False  # our task uses more of the GPU's memory than allowed
    state: DeviceState | None = None

    @property
    def may_work(self) -> bool:
        return self.mode is Mode.READY


IsOurs = Callable[[int], bool]


class DevicePolicy:
    """The rules for one device, with the memory they need for hysteresis."""

    def __init__(self, index: int, settings: PolicySettings) -> None:
        self.index = index
        self.settings = settings
        self._idle_since: float | None = None
        self._hot = False
        self._over_power = False
        self._baseline: int | None = None  # memory used with no process on the GPU at all

    def evaluate(
        self,
        state: DeviceState,
        is_ours: IsOurs,
        running: bool,
        mono: float,
        window_left: float,
        input_idle: float | None = None,  # seconds since the desktop user's last input
        paused: str = "",  # the volunteer's pause in force: until when; "" if none
        disk_low: str = "",  # why the data directory's disk has too little room; "" if not
    ) -> Decision:
        s = self.settings
        owner = self._owner_activity(state, is_ours, running)
        recent_input = input_idle is not None and input_idle < s.input_idle_seconds
        if not owner and recent_input:
            owner = f"keyboard or mouse used {input_idle:.0f}s ago"
        if owner or state.error or paused or disk_low:
            self._idle_since = None
        elif self._idle_since is None:
            self._idle_since = mono
        self._update_latches(state)
        over_vram = self._over_vram(state, is_ours) if running else False

        def decide(mode: Mode, reason: str = "") -> Decision:
            return Decision(mode, reason, window_left, over_vram, state)

        if s.enabled is not None and self.index not in s.enabled:
            return decide(Mode.DISABLED, "not in the devices this node may use")
        if paused:
            return decide(Mode.PAUSED, paused)
        if disk_low:
            return decide(Mode.DISK_LOW, disk_low)
        if window_left <= 0:
            return decide(Mode.OUTSIDE_WINDOW, f"windows: {s.windows.describe()}")
        if state.error:
            return decide(Mode.UNREADABLE, state.error)
        if owner:
            return decide(Mode.OWNER_ACTIVE, owner)
        if self._hot:
            return decide(Mode.TOO_HOT, f"{state.temperature:g} C; limit {s.max_temp:g} C")
        if self._over_power:
            return decide(Mode.POWER, f"{state.power:g} W; cap {s.power_cap:g} W")
        assert self._idle_since is not None
        idle_for = mono - self._idle_since
        if idle_for < s.idle_seconds:
            return decide(Mode.WAITING, f"owner away {idle_for:.0f}s of {s.idle_seconds:g}s")
        return decide(Mode.READY)

    def _owner_activity(self, state: DeviceState, is_ours: IsOurs, running: bool) -> str:
        """Why the owner is using the GPU, or ""."""
        s = self.settings
        others = [p for p in state.processes if not is_ours(p.pid)]
        if others:
            pids = ", ".join(f"{p.kind} pid {p.pid}" for p in others[:3])
            return f"{len(others)} other process(es) on the GPU ({pids})"
        ours = sum(p.used_memory for p in state.processes)
        used = state.memory_used
        if used is not None and not state.processes and not running:
            self._baseline = used if self._baseline is None else min(self._baseline, used)
        if used is not None and self._baseline is not None:
            other_memory = used - ours - self._baseline
            if other_memory > s.max_other_memory:
                return f"{other_memory / MiB:.0f} MiB of GPU memory used by others"
        busy = state.utilization
        if not running and busy is not None and busy > s.max_utilization:
            return f"GPU {busy:.0f}% busy with other work"
        return ""

    def _update_latches(self, state: DeviceState) -> None:
        s = self.settings
        if s.max_temp is not None and state.temperature is not None:
            if state.temperature >= s.max_temp:
                self._hot = True
            elif state.temperature <= s.max_temp - s.temp_hysteresis:
                self._hot = False
        if s.power_cap is not None and state.power is not None:
            if state.power > s.power_cap:
                self._over_power = True
            elif state.power <= s.power_cap * (1 - s.power_hysteresis):
                self._over_power = False

    def _over_vram(self, state: DeviceState, is_ours: IsOurs) -> bool:
        if self.settings.max_vram >= 1.0 or not state.memory_total:
            return False
        ours = sum(p.used_memory for p in state.processes if is_ours(p.pid))
        return ours > self.settings.max_vram * state.memory_total
