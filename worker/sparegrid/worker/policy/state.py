"""Readings of a device's state, and the sources that produce them.

A `DeviceStateSource` returns one `DeviceState` per device index it is asked about. The
real one reads NVML (`nvml.NvmlSource`); `IdleSource` is for devices nothing can watch (a
CPU device: always idle); `SyntheticSource` is set by tests in-process, and `FileSource`
reads a JSON file on every poll, so a test (or a script) can play the GPU's owner from
outside the worker process.
"""

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol


@dataclass(frozen=True)
class GpuProcess:
    pid: int
    used_memory: int = 0  # bytes; 0 when the driver does not say
    kind: str = "compute"  # "compute" or "graphics"


@dataclass(frozen=True)
class DeviceState:
    """One reading. None means the source cannot tell (the rule that needs it is skipped)."""

    index: int
    utilization: float | None = None  # percent, 0-100, all processes together
    memory_used: int | None = None  # bytes, all processes together
    memory_total: int | None = None
    processes: tuple[GpuProcess, ...] = ()
    temperature: float | None = None  # degrees Celsius
    power: float | None = None  # watts
    error: str = ""  # the reading failed: the device is treated as busy, this says why


class DeviceStateSource(Protocol):
    name: str

    def read(self, indices: Iterable[int]) -> dict[int, DeviceState]: ...

    def close(self) -> None: ...


class IdleSource:
    """Nothing to watch: every device reads as idle (the CPU fallback device)."""

    name = "none"

    def read(self, indices: Iterable[int]) -> dict[int, DeviceState]:
        return {i: DeviceState(i) for i in indices}

    def close(self) -> None:
        pass


@dataclass
class SyntheticSource:
    """States set by a test: `set(DeviceState(...))`; unknown devices read as idle."""

    states: dict[int, DeviceState] = field(default_factory=dict)
    name: str = "synthetic"
    reads: int = 0  # how many polls read it: a test waits on polls, not on time

    def set(self, *states: DeviceState) -> None:
        for state in states:
            self.states[state.index] = state

    def read(self, indices: Iterable[int]) -> dict[int, DeviceState]:
        self.reads += 1
        return {i: self.states.get(i, DeviceState(i)) for i in indices}

    def close(self) -> None:
        pass


class FileSource:
    """Reads `{"devices": {"0": {"utilization": 0, "processes": [{"pid": 1}], ...}}}`.

    A missing file reads as idle; a file that does not parse reads as an error (busy), so
    a half-written file never starts work. Keys are the DeviceState fields.
    """

    name = "file"

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self, indices: Iterable[int]) -> dict[int, DeviceState]:
        wanted = list(indices)
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return {i: DeviceState(i) for i in wanted}
        except OSError as exc:
            return {i: DeviceState(i, error=f"cannot read {self.path}: {exc}") for i in wanted}
        try:
            devices = json.loads(text)["devices"]
            return {i: _state(i, devices.get(str(i), {})) for i in wanted}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            return {
                i: DeviceState(i, error=f"bad device-state file {self.path}: {exc}") for i in wanted
            }

    def close(self) -> None:
        pass


def _state(index: int, raw: dict[str, Any]) -> DeviceState:
    processes = tuple(
        GpuProcess(int(p["pid"]), int(p.get("used_memory", 0)), str(p.get("kind", "compute")))
        for p in raw.get("processes", [])
    )
    return DeviceState(
        index,
        utilization=_num(raw.get("utilization")),
        memory_used=_int(raw.get("memory_used")),
        memory_total=_int(raw.get("memory_total")),
        processes=processes,
        temperature=_num(raw.get("temperature")),
        power=_num(raw.get("power")),
        error=str(raw.get("error", "")),
    )


def _num(value: Any) -> float | None:
    return None if value is None else float(value)


def _int(value: Any) -> int | None:
    return None if value is None else int(value)
