"""Helpers of the daemon for what the volunteer controls and sees: which devices it may
use, the executor sandbox settings, and the status snapshot `worker status` shows."""

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sparegrid.worker.config import ConfigError, WorkerConfig
from sparegrid.worker.devices import DeviceInfo
from sparegrid.worker.policy import Mode
from sparegrid.worker.sandbox import SandboxSettings, python_paths

if TYPE_CHECKING:
    from sparegrid.worker.daemon import Worker


def check_devices(config: WorkerConfig, devices: Sequence[DeviceInfo]) -> None:
    """--devices may name only devices this machine has."""
    if config.devices is None:
        return
    have = sorted(d.index for d in devices)
    missing = sorted(set(config.devices) - set(have))
    if missing:
        raise ConfigError(
            f"--devices names device(s) {', '.join(map(str, missing))}, but this node has "
            f"device(s) {', '.join(map(str, have)) or 'none'}"
        )


def _inside(path: Path, parent: Path) -> bool:
    return path == parent or parent in path.parents


def sandbox_settings(config: WorkerConfig) -> SandboxSettings | None:
    """What the executor child applies to itself; None when isolation is off. A Python path
    that contains the data dir is left out: the node key must stay unreadable."""
    if config.sandbox == "off":
        return None
    data_dir = config.data_dir.resolve()
    readable = [p for p in python_paths() if not _inside(data_dir, Path(p).resolve())]
    readable.append(str(data_dir / "cache"))
    return SandboxSettings(
        mode=config.sandbox,
        readable=readable,
        open_files=config.task_open_files,
        output_size=config.task_output_size,
        memory=config.task_memory,
        cpu_seconds=config.max_attempt_seconds * (os.cpu_count() or 1),
    )


def _state(worker: "Worker", index: int, tasks: int) -> tuple[str, str]:
    decision = worker.decision(index)
    if decision is None:
        return "unknown", ""
    if decision.mode is Mode.READY:
        if tasks:
            return "working", ""
        left, estimate = decision.window_left, worker.task_estimate(index)
        if left < estimate:
            return "idle-waiting", f"window closes in {left:.0f}s; tasks take ~{estimate:.0f}s"
        return "idle-waiting", "waiting for work"
    return decision.mode.value, decision.reason


def _device(worker: "Worker", device: DeviceInfo, now: float) -> dict[str, Any]:
    tasks = [
        {
            "attempt_id": a.attempt_id, "job_id": a.job_id, "kind": a.kind, "phase": phase,
            "seconds": now - worker.since(a.attempt_id, now),
        }
        for a, phase in worker.tasks_on(device.index)
    ]  # fmt: skip
    state, reason = _state(worker, device.index, len(tasks))
    decision = worker.decision(device.index)
    reading = decision.state if decision is not None else None
    return {
        "index": device.index,
        "name": device.name,
        "kind": device.kind,
        "state": state,
        "reason": reason,
        "utilization": reading.utilization if reading else None,
        "temperature": reading.temperature if reading else None,
        "power": reading.power if reading else None,
        "tasks": tasks,
    }


def status_snapshot(worker: "Worker") -> dict[str, Any]:
    now = worker.monotonic()
    config = worker.config
    windows = config.parsed_windows
    return {
        "node_id": worker.node_id,
        "name": config.name,
        "coordinator": config.coordinator,
        "connected": worker.connected,
        "draining": worker.draining,
        "device_state": worker.device_state_name,
        "windows": windows.describe(),
        "window_left": None if math.isinf(w := windows.seconds_left(worker.wall_now())) else w,
        "devices": [_device(worker, d, now) for d in worker.devices],
        "credit": worker.earnings.snapshot(),
        "isolation": {
            "network": worker.isolation.network,
            "filesystem": worker.isolation.filesystem,
            "limits": worker.isolation.limits,
        },
        "errors": list(worker.errors.entries),
    }
