"""Device readings from NVML (nvidia-ml-py, imported only when this source is used).

Every field is read on its own: a field the GPU does not support reads as None and the
rule that needs it is skipped. If NVML itself fails (driver updated or unloaded, GPU lost)
each device reads as an error, which the policy treats as busy, and the next poll tries to
start NVML again, so the worker survives a driver update without a restart.
"""

import contextlib
import importlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from sparegrid.worker.policy.state import DeviceState, GpuProcess

Loader = Callable[[], Any]


def _load_pynvml() -> Any:
    return importlib.import_module("pynvml")


class NvmlUnavailable(RuntimeError):
    """NVML cannot be used on this machine; the message says why."""


class NvmlSource:
    name = "nvml"

    def __init__(self, uuids: Mapping[int, str] | None = None, load: Loader = _load_pynvml):
        try:
            self._nvml = load()
        except ImportError:
            raise NvmlUnavailable(
                "nvidia-ml-py is not installed (pip install 'sparegrid[worker]')"
            ) from None
        self._uuids = dict(uuids or {})
        self._started = False
        self._start()

    def _start(self) -> None:
        try:
            self._nvml.nvmlInit()
        except self._nvml.NVMLError as exc:
            raise NvmlUnavailable(f"NVML did not start ({exc}); is the driver loaded?") from None
        self._started = True

    def _handle(self, index: int) -> Any:
        uuid = self._uuids.get(index)
        if uuid:
            return self._nvml.nvmlDeviceGetHandleByUUID(uuid)
        return self._nvml.nvmlDeviceGetHandleByIndex(index)

    def read(self, indices: Iterable[int]) -> dict[int, DeviceState]:
        wanted = list(indices)
        if not self._started:
            try:
                self._start()
            except NvmlUnavailable as exc:
                return {i: DeviceState(i, error=str(exc)) for i in wanted}
        states = {}
        for index in wanted:
            try:
                states[index] = self._read_one(index, self._handle(index))
            except self._nvml.NVMLError as exc:
                states[index] = DeviceState(index, error=f"NVML could not read the GPU: {exc}")
                self._restart()
        return states

    def _restart(self) -> None:
        with contextlib.suppress(Exception):
            self._nvml.nvmlShutdown()
        self._started = False

    def _field(self, read: Callable[[], Any]) -> Any:
        try:
            return read()
        except self._nvml.NVMLError_NotSupported:
            return None

    def _read_one(self, index: int, handle: Any) -> DeviceState:
        nvml = self._nvml
        memory = nvml.nvmlDeviceGetMemoryInfo(handle)
        util = self._field(lambda: nvml.nvmlDeviceGetUtilizationRates(handle))
        temp = self._field(lambda: nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU))
        power_mw = self._field(lambda: nvml.nvmlDeviceGetPowerUsage(handle))
        processes = self._processes(handle)
        return DeviceState(
            index,
            utilization=None if util is None else float(util.gpu),
            memory_used=int(memory.used),
            memory_total=int(memory.total),
            processes=processes,
            temperature=None if temp is None else float(temp),
            power=None if power_mw is None else power_mw / 1000.0,
        )

    def _processes(self, handle: Any) -> tuple[GpuProcess, ...]:
        nvml = self._nvml
        found: dict[int, GpuProcess] = {}
        for kind, read in (
            ("graphics", nvml.nvmlDeviceGetGraphicsRunningProcesses),
            ("compute", nvml.nvmlDeviceGetComputeRunningProcesses),
        ):
            for proc in self._field(lambda r=read: r(handle)) or ():  # type: ignore[misc]
                used = getattr(proc, "usedGpuMemory", None)
                found[int(proc.pid)] = GpuProcess(int(proc.pid), int(used or 0), kind)
        return tuple(found.values())

    def set_power_limit(self, index: int, watts: float) -> str:
        """Sets the board power limit; returns "" or why it could not (it needs root)."""
        nvml = self._nvml
        try:
            handle = self._handle(index)
            low, high = nvml.nvmlDeviceGetPowerManagementLimitConstraints(handle)
            milliwatts = int(min(max(watts * 1000, low), high))
            nvml.nvmlDeviceSetPowerManagementLimit(handle, milliwatts)
        except nvml.NVMLError as exc:
            return f"could not set the power limit on GPU {index} ({exc}); pausing above it instead"
        return ""

    def close(self) -> None:
        if self._started:
            self._restart()
