"""The daemon's start-up: checks of what the volunteer asked for (devices, isolation), the
policy monitor, the GPU power cap and the settings the executor sandbox gets."""

import asyncio
import dataclasses
import logging
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

from sparegrid.wire.clock import Clock
from sparegrid.worker.config import ConfigError, WorkerConfig
from sparegrid.worker.node.devices import Detection, DeviceInfo, cpu_device
from sparegrid.worker.policy import DeviceStateSource, IdleSource, PolicySettings
from sparegrid.worker.policy.monitor import DeviceMonitor, make_source
from sparegrid.worker.policy.nvml import NvmlSource
from sparegrid.worker.policy.userinput import InputIdle, NoInput, make_input_idle
from sparegrid.worker.slots.child.sandbox import Report, SandboxSettings, probe, python_paths

_log = logging.getLogger("sparegrid.worker")


def make_monitor(
    config: WorkerConfig,
    devices: Sequence[DeviceInfo],
    source: DeviceStateSource | None,
    clock: Clock,
    our_pids: Callable[[], set[int]],
    busy: Callable[[int], bool],
) -> DeviceMonitor:
    """The monitor for `devices`, reading `source` or the one `--device-state` names."""
    if source is None:
        uuids = {d.index: d.uuid for d in devices if d.kind == "cuda"}
        source, note = make_source(config.device_state, uuids)
        if note:
            _log.warning(note)
    settings = policy_settings(config, source)
    _warn_unread_limits(config, devices, source)
    user_input: InputIdle = NoInput()
    if config.input_idle_seconds:
        user_input, note = make_input_idle(config.input_source)
        if note:
            _log.warning("--input-idle-seconds is set, but %s", note)
    return DeviceMonitor(
        source,
        settings,
        [d.index for d in devices],
        clock,
        config.poll_interval,
        our_pids=our_pids,
        running=busy,
        user_input=user_input,
    )


async def check_isolation(config: WorkerConfig) -> Report:
    """What isolation executors get here; ConfigError if it must be complete and is not."""
    mode = config.sandbox
    work = config.data_dir / "work" / "probe"
    report = await asyncio.to_thread(probe, work, mode)
    shutil.rmtree(work, ignore_errors=True)
    if mode == "off":
        _log.warning("executor isolation is off (--sandbox off)")
    elif not report.complete:
        if mode == "require":
            raise ConfigError(f"--sandbox require, but {report.summary()}")
        _log.warning("executor isolation is incomplete: %s", report.summary())
    else:
        _log.info("executor isolation: %s", report.summary())
    return report


def policy_settings(config: WorkerConfig, source: DeviceStateSource) -> PolicySettings:
    """The rules' settings for what `source` can read: with no readings there is no owner
    to wait for, so no idle time before work."""
    settings = config.policy()
    if isinstance(source, IdleSource):
        settings = dataclasses.replace(settings, idle_seconds=0.0)
    return settings


def _warn_unread_limits(
    config: WorkerConfig, devices: Sequence[DeviceInfo], source: DeviceStateSource
) -> None:
    """A temperature or power limit with nothing to read it from does nothing: say so, once,
    rather than let the volunteer believe the machine is protected."""
    gpu = any(d.kind == "cuda" for d in devices)
    if isinstance(source, IdleSource) or not gpu:
        where = source.name if gpu else "no GPU here"
        for flag, value, unit in (
            ("--max-temp", config.max_temp, "C"),
            ("--power-cap", config.power_cap, "W"),
        ):
            if value is not None:
                _log.warning(
                    "%s %g %s does nothing: no sensor to read it from (%s; a CPU's "
                    "temperature and power are not read)",
                    flag,
                    value,
                    unit,
                    where,
                )


def apply_power_cap(
    config: WorkerConfig, source: DeviceStateSource, devices: Sequence[DeviceInfo]
) -> None:
    """Sets --power-cap on each GPU through NVML where allowed (root); the policy pauses
    above the cap either way."""
    if config.power_cap is None or not isinstance(source, NvmlSource):
        return
    for device in devices:
        problem = source.set_power_limit(device.index, config.power_cap)
        if problem:
            _log.warning(problem)


NO_GPU = (
    "no GPU found; lending the CPU needs --devices cpu "
    '(or devices = ["cpu"] in the settings file, or SPAREGRID_WORKER_DEVICES=cpu)'
)


def choose_devices(config: WorkerConfig, found: Detection) -> Detection:
    """What to lend of the devices found: a CPU only when the volunteer chose it
    (`--devices cpu`, then the CPU alone even beside GPUs), never silently."""
    if config.devices == "cpu":
        cpu = next((d for d in found.devices if d.kind == "cpu"), None) or cpu_device()
        if cpu in found.devices:
            return found
        return Detection((cpu,), f"{found.summary}; lending the CPU only (--devices cpu)")
    if not any(d.kind == "cuda" for d in found.devices):
        raise ConfigError(f"{NO_GPU}. {found.summary}")
    check_devices(config, found.devices)
    return found


def check_devices(config: WorkerConfig, devices: Sequence[DeviceInfo]) -> None:
    """--devices may name only devices this machine has (cpu: only CPU devices)."""
    if config.devices is None:
        return
    if config.devices == "cpu":
        gpus = [str(d.index) for d in devices if d.kind != "cpu"]
        if gpus:
            raise ConfigError(f"--devices cpu lends only a CPU, but GPU(s) {', '.join(gpus)} given")
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
