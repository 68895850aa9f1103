"""Device-state sources (file, NVML through a fake pynvml) and the monitor that polls them."""

import asyncio
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from sparegrid.wire.clock import FakeClock
from sparegrid.worker.policy import (
    Decision,
    DeviceState,
    FileSource,
    GpuProcess,
    IdleSource,
    Mode,
    PolicySettings,
    SyntheticSource,
)
from sparegrid.worker.policy.monitor import DeviceMonitor, make_source
from sparegrid.worker.policy.nvml import NvmlSource, NvmlUnavailable


def test_file_source_reads_each_device_and_treats_a_bad_file_as_busy(tmp_path: Path) -> None:
    path = tmp_path / "gpu.json"
    source = FileSource(path)
    assert source.read([0]) == {0: DeviceState(0)}  # no file yet: idle
    owner = {"pid": 77, "used_memory": 1024, "kind": "graphics"}
    path.write_text(json.dumps({"devices": {"1": {"utilization": 50, "processes": [owner]}}}))
    states = source.read([0, 1])
    assert states[0] == DeviceState(0)
    assert states[1].utilization == 50.0
    assert states[1].processes == (GpuProcess(77, 1024, "graphics"),)
    path.write_text("{half a file")
    assert "bad device-state file" in source.read([0])[0].error


class FakeNvmlError(Exception):
    pass


class FakeNotSupported(FakeNvmlError):
    pass


def fake_pynvml(processes: list[Any], fail_reads: list[bool]) -> Any:
    def memory(_: Any) -> Any:
        if fail_reads and fail_reads.pop(0):
            raise FakeNvmlError("GPU is lost")
        return SimpleNamespace(used=3 << 30, total=80 << 30)

    def not_supported(*_: Any) -> Any:
        raise FakeNotSupported("not supported")

    return SimpleNamespace(
        NVMLError=FakeNvmlError,
        NVMLError_NotSupported=FakeNotSupported,
        NVML_TEMPERATURE_GPU=0,
        inits=[],
        nvmlInit=lambda: None,
        nvmlShutdown=lambda: None,
        nvmlDeviceGetHandleByIndex=lambda i: f"h{i}",
        nvmlDeviceGetHandleByUUID=lambda u: f"u{u}",
        nvmlDeviceGetMemoryInfo=memory,
        nvmlDeviceGetUtilizationRates=lambda h: SimpleNamespace(gpu=42),
        nvmlDeviceGetTemperature=lambda h, sensor: 71,
        nvmlDeviceGetPowerUsage=not_supported,
        nvmlDeviceGetComputeRunningProcesses=lambda h: processes,
        nvmlDeviceGetGraphicsRunningProcesses=lambda h: [
            SimpleNamespace(pid=5, usedGpuMemory=None)
        ],
    )


def test_nvml_source_reads_every_field_and_survives_a_lost_gpu() -> None:
    procs = [SimpleNamespace(pid=9, usedGpuMemory=1 << 30)]
    fails = [False, True, False]
    source = NvmlSource(load=lambda: fake_pynvml(procs, fails))
    state = source.read([0])[0]
    assert (state.utilization, state.temperature, state.power) == (42.0, 71.0, None)
    assert (state.memory_used, state.memory_total) == (3 << 30, 80 << 30)
    assert set(state.processes) == {GpuProcess(5, 0, "graphics"), GpuProcess(9, 1 << 30, "compute")}
    assert "GPU is lost" in source.read([0])[0].error  # busy, and NVML restarts next time
    assert source.read([0])[0].error == ""


def test_nvml_source_says_why_it_cannot_run() -> None:
    def missing() -> Any:
        raise ImportError("no pynvml")

    with pytest.raises(NvmlUnavailable, match="nvidia-ml-py is not installed"):
        NvmlSource(load=missing)


def test_make_source_picks_by_setting(tmp_path: Path) -> None:
    assert isinstance(make_source("auto", {})[0], IdleSource)  # CPU only: nothing to watch
    assert isinstance(make_source("none", {0: "GPU-1"})[0], IdleSource)
    source, _ = make_source(f"file:{tmp_path / 's.json'}", {})
    assert isinstance(source, FileSource) and source.path == tmp_path / "s.json"


def monitor(source: SyntheticSource, clock: FakeClock, **kwargs: Any) -> DeviceMonitor:
    settings = PolicySettings(idle_seconds=kwargs.pop("idle_seconds", 0))
    return DeviceMonitor(source, settings, [0, 1], clock, interval=0.25, **kwargs)


def test_monitor_reports_only_changes() -> None:
    source, clock = SyntheticSource(), FakeClock()
    m = monitor(source, clock)
    assert {i: d.mode for i, d in m.poll().items()} == {0: Mode.READY, 1: Mode.READY}
    assert m.poll() == {}
    source.set(DeviceState(1, processes=(GpuProcess(123),)))
    changed = m.poll()
    assert list(changed) == [1] and changed[1].mode is Mode.OWNER_ACTIVE


def test_processes_our_children_started_are_ours(tmp_path: Path) -> None:
    # pid 500 is a grandchild: its session id (field 6 of /proc/PID/stat) is our child, 400
    (tmp_path / "500").mkdir()
    (tmp_path / "500" / "stat").write_text("500 (python (x)) S 401 500 400 0 -1 4194560")
    source, clock = SyntheticSource(), FakeClock()
    m = monitor(source, clock, our_pids=lambda: {400}, proc=tmp_path)
    source.set(DeviceState(0, processes=(GpuProcess(400), GpuProcess(500))))
    assert m.poll()[0].mode is Mode.READY
    source.set(DeviceState(0, processes=(GpuProcess(400), GpuProcess(501))))
    assert m.poll()[0].mode is Mode.OWNER_ACTIVE


async def test_monitor_loop_calls_back_on_each_change_without_waiting() -> None:
    source, clock = SyntheticSource(), FakeClock()
    m = monitor(source, clock, idle_seconds=1.0)
    seen: list[tuple[int, Mode]] = []
    done = asyncio.Event()

    def on_change(index: int, decision: Decision) -> None:
        seen.append((index, decision.mode))
        if index == 0 and decision.mode is Mode.READY:
            done.set()

    loop = asyncio.create_task(m.run(on_change))
    async with asyncio.timeout(5):
        await done.wait()  # the fake clock advances by the poll interval on each sleep
    loop.cancel()
    await asyncio.gather(loop, return_exceptions=True)
    assert (0, Mode.READY) in seen and (1, Mode.READY) in seen
    assert clock.monotonic() - 1000.0 >= 1.0
