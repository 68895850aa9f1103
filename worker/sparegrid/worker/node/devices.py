"""Finding the compute devices this node offers: NVML, then torch.cuda, then the CPU.

Each probe is a plain function given a loader, so tests pass fakes. A probe that cannot run
says why, and the reason ends up in the one-line summary logged and printed at start.
"""

import contextlib
import importlib
import os
import platform
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

DeviceKind = Literal["cpu", "cuda"]
Loader = Callable[[], Any]


@dataclass(frozen=True)
class DeviceInfo:
    """One device; each device is one slot that runs one task at a time."""

    index: int
    kind: DeviceKind
    name: str
    uuid: str = ""
    memory_bytes: int = 0
    compute_capability: str = ""
    driver_version: str = ""
    backend: str = "cpu"


@dataclass(frozen=True)
class Detection:
    devices: tuple[DeviceInfo, ...]
    summary: str  # which backend found the devices, or why none did


class ProbeUnavailable(Exception):
    """A probe cannot be used here; the message says why."""


def _import(name: str) -> Any:
    return importlib.import_module(name)


def detect_devices(
    load_nvml: Loader = lambda: _import("pynvml"),
    load_torch: Loader = lambda: _import("torch"),
    cpuinfo: Path = Path("/proc/cpuinfo"),
) -> Detection:
    """NVML first, then torch.cuda, else one CPU device (lent only with --devices cpu:
    `startup.check_found`); never raises."""
    reasons: list[str] = []
    for backend, probe, loader in (
        ("nvml", probe_nvml, load_nvml),
        ("torch", probe_torch, load_torch),
    ):
        try:
            devices = probe(loader)
        except ProbeUnavailable as exc:
            reasons.append(f"{backend}: {exc}")
            continue
        return Detection(tuple(devices), _found_summary(devices, reasons))
    cpu = cpu_device(cpuinfo)
    summary = f"cpu: no usable GPU ({'; '.join(reasons)}); the CPU is {cpu.name}"
    return Detection((cpu,), summary)


def _found_summary(devices: list[DeviceInfo], reasons: list[str]) -> str:
    first = devices[0]
    names = ", ".join(sorted({d.name for d in devices}))
    driver = f", driver {first.driver_version}" if first.driver_version else ""
    plural = "s" if len(devices) > 1 else ""
    line = f"{first.backend}: {len(devices)} CUDA device{plural} ({names}{driver})"
    return f"{line}; {'; '.join(reasons)}" if reasons else line


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def probe_nvml(load: Loader) -> list[DeviceInfo]:
    try:
        nvml = load()
    except ImportError:
        raise ProbeUnavailable("nvidia-ml-py is not installed (pip install nvidia-ml-py)") from None
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as exc:
        raise ProbeUnavailable(
            f"NVML did not start ({exc}); is the NVIDIA driver loaded?"
        ) from None
    try:
        devices = _nvml_devices(nvml)
    except nvml.NVMLError as exc:
        raise ProbeUnavailable(f"NVML query failed: {exc}") from None
    finally:
        _nvml_shutdown(nvml)
    if not devices:
        raise ProbeUnavailable("NVML found no GPU")
    return devices


def _nvml_shutdown(nvml: Any) -> None:
    with contextlib.suppress(nvml.NVMLError):
        nvml.nvmlShutdown()


def _nvml_devices(nvml: Any) -> list[DeviceInfo]:
    driver = _text(nvml.nvmlSystemGetDriverVersion())
    devices = []
    for index in range(int(nvml.nvmlDeviceGetCount())):
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        major, minor = nvml.nvmlDeviceGetCudaComputeCapability(handle)
        devices.append(
            DeviceInfo(
                index=index,
                kind="cuda",
                name=_text(nvml.nvmlDeviceGetName(handle)),
                uuid=_text(nvml.nvmlDeviceGetUUID(handle)),
                memory_bytes=int(nvml.nvmlDeviceGetMemoryInfo(handle).total),
                compute_capability=f"{int(major)}.{int(minor)}",
                driver_version=driver,
                backend="nvml",
            )
        )
    return devices


def probe_torch(load: Loader) -> list[DeviceInfo]:
    try:
        torch = load()
    except ImportError:
        raise ProbeUnavailable("torch is not installed") from None
    except Exception as exc:  # a broken CUDA install can fail in many ways at import
        raise ProbeUnavailable(f"torch failed to import ({exc})") from None
    if not torch.cuda.is_available():
        raise ProbeUnavailable("torch is installed but torch.cuda.is_available() is False")
    devices = []
    for index in range(int(torch.cuda.device_count())):
        props = torch.cuda.get_device_properties(index)
        devices.append(
            DeviceInfo(
                index=index,
                kind="cuda",
                name=str(props.name),
                uuid=_text(getattr(props, "uuid", "")),
                memory_bytes=int(props.total_memory),
                compute_capability=f"{int(props.major)}.{int(props.minor)}",
                backend="torch.cuda",
            )
        )
    if not devices:
        raise ProbeUnavailable("torch.cuda found no GPU")
    return devices


def cpu_device(cpuinfo: Path = Path("/proc/cpuinfo")) -> DeviceInfo:
    return DeviceInfo(
        index=0, kind="cpu", name=_cpu_model(cpuinfo), memory_bytes=_total_memory(), backend="cpu"
    )


def _cpu_model(cpuinfo: Path) -> str:
    try:
        lines = cpuinfo.read_text(errors="replace").splitlines()
    except OSError:
        lines = []
    for line in lines:
        key, _, value = line.partition(":")
        if key.strip() in ("model name", "Hardware", "Model") and value.strip():
            return value.strip()
    return platform.processor() or platform.machine() or "cpu"


def _total_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0
