"""The status snapshot `sparegrid worker status` shows, read through `StatusView`.

The daemon implements the view; this module knows only the protocol, so status does not
import the daemon (and the daemon imports this)."""

import math
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol

from sparegrid.v1 import worker_pb2
from sparegrid.worker.config import WorkerConfig
from sparegrid.worker.node.devices import DeviceInfo
from sparegrid.worker.policy import Decision, Mode


class Isolation(Protocol):
    @property
    def network(self) -> str: ...
    @property
    def filesystem(self) -> str: ...
    @property
    def limits(self) -> str: ...


class Earned(Protocol):
    def snapshot(self) -> Mapping[str, Any]: ...


class Logged(Protocol):
    @property
    def entries(self) -> Sequence[Mapping[str, str]]: ...


class StatusView(Protocol):
    """What the status snapshot reads from the running daemon."""

    @property
    def config(self) -> WorkerConfig: ...
    @property
    def devices(self) -> Sequence[DeviceInfo]: ...
    @property
    def node_id(self) -> str: ...
    @property
    def connected(self) -> bool: ...
    @property
    def draining(self) -> bool: ...
    @property
    def standing(self) -> tuple[str, str]: ...
    @property
    def device_state_name(self) -> str: ...
    @property
    def user_input_name(self) -> str: ...
    @property
    def earnings(self) -> Earned: ...
    @property
    def isolation(self) -> Isolation: ...
    @property
    def errors(self) -> Logged: ...

    def decision(self, device: int) -> Decision | None: ...
    def task_estimate(self, device: int) -> float: ...
    def monotonic(self) -> float: ...
    def wall_now(self) -> datetime: ...
    def since(self, attempt_id: str, default: float) -> float: ...
    def executor_pid(self, device: int) -> int | None: ...
    def tasks_on(self, device: int) -> Sequence[tuple[worker_pb2.Assignment, str]]: ...


def _state(worker: StatusView, index: int, tasks: int) -> tuple[str, str]:
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
    if decision.mode is Mode.OUTSIDE_WINDOW:
        opens = worker.config.parsed_windows.seconds_until_open(worker.wall_now())
        return decision.mode.value, f"opens in {_duration(opens)}"
    return decision.mode.value, decision.reason


def _duration(seconds: float) -> str:
    if math.isinf(seconds):
        return "never"
    minutes = int(seconds // 60)
    return f"{minutes // 60}h {minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m"


def _device(worker: StatusView, device: DeviceInfo, now: float) -> dict[str, Any]:
    tasks = [
        {
            "attempt_id": a.attempt_id,
            "job_id": a.job_id,
            "kind": a.kind,
            "phase": phase,
            "seconds": now - worker.since(a.attempt_id, now),
        }
        for a, phase in worker.tasks_on(device.index)
    ]
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
        "executor_pid": worker.executor_pid(device.index),
    }


def status_snapshot(worker: StatusView) -> dict[str, Any]:
    now = worker.monotonic()
    config = worker.config
    windows = config.parsed_windows
    return {
        "node_id": worker.node_id,
        "name": config.name,
        "coordinator": config.coordinator,
        "connected": worker.connected,
        "standing": {"state": worker.standing[0], "reason": worker.standing[1]},
        "draining": worker.draining,
        "device_state": worker.device_state_name,
        "user_input": worker.user_input_name,
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
