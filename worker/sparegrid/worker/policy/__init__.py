"""When this node may use each of its GPUs: device readings, rules, and the monitor.

A `DeviceStateSource` reads each device (NVML on a real GPU; a synthetic or file-driven
source in tests), `DevicePolicy` turns readings into a `Decision` per device (rules with
hysteresis, time windows, limits), and `DeviceMonitor` polls on an injectable clock and
tells the daemon when a device must stop (preempt) or may take work again.
"""

from sparegrid.worker.policy.rules import Decision, DevicePolicy, Mode, PolicySettings
from sparegrid.worker.policy.state import (
    DeviceState,
    DeviceStateSource,
    FileSource,
    GpuProcess,
    IdleSource,
    SyntheticSource,
)
from sparegrid.worker.policy.windows import TimeWindow, WindowError, Windows, parse_windows

__all__ = [
    "Decision",
    "DevicePolicy",
    "DeviceState",
    "DeviceStateSource",
    "FileSource",
    "GpuProcess",
    "IdleSource",
    "Mode",
    "PolicySettings",
    "SyntheticSource",
    "TimeWindow",
    "WindowError",
    "Windows",
    "parse_windows",
]
