"""The worker's settings, validated once at start and passed explicitly."""

import math
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from sparegrid.wire.config import ConfigError as ConfigError  # re-exported
from sparegrid.wire.receipt import MAX_INLINE_OUTPUT
from sparegrid.wire.targets import TargetError, grpc_target
from sparegrid.worker.policy.rules import MiB, PolicySettings
from sparegrid.worker.policy.windows import WindowError, Windows, parse_windows

DEFAULT_COORDINATOR = "127.0.0.1:50051"
DEFAULT_INLINE_LIMIT = 64 * 1024
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


def parse_address(address: str) -> tuple[str, int]:
    """Splits "host:port" (or "[v6]:port"); raises ConfigError saying what is wrong."""
    host, sep, port_text = address.strip().rpartition(":")
    if not sep or not host:
        raise ConfigError(
            f"coordinator address {address!r} is not HOST:PORT; use e.g. {DEFAULT_COORDINATOR}"
        )
    if host.startswith("[") != host.endswith("]"):
        raise ConfigError(f"coordinator address {address!r} has an unbalanced IPv6 bracket")
    if ":" in host and not host.startswith("["):
        raise ConfigError(f"coordinator address {address!r}: write IPv6 hosts as [::1]:50051")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(
            f"coordinator address {address!r} has port {port_text!r}; a port is 1..65535"
        )
    return host, int(port_text)


@dataclass(frozen=True)
class WorkerConfig:
    """Everything the worker daemon needs to know; see `validate` for the rules."""

    coordinator: str = DEFAULT_COORDINATOR
    data_dir: Path = Path("sparegrid-worker")
    name: str = field(default_factory=socket.gethostname)
    tls_ca: Path | None = None
    tls: bool = False  # TLS with the system's trust roots (tls_ca implies TLS with that CA)
    prefetch: int | None = None  # None: the window adapts to task time and round trip
    # None: the intervals the coordinator asks for (busy and idle); a value replaces both
    heartbeat_interval: float | None = None
    max_attempt_seconds: float = 3600.0
    inline_limit: int = DEFAULT_INLINE_LIMIT
    log_json: bool = False
    drain_timeout: float = 30.0
    reconnect_initial: float = 0.2
    reconnect_max: float = 30.0
    batch_window: float = 0.002
    batch_max: int = 256
    # -- when and how much of each GPU this node lends (see sparegrid.worker.policy) ----
    # GPU indices to use; None: all; "cpu": lend the CPU of a machine without a GPU (a
    # worker that finds no GPU refuses to start unless its volunteer chose this)
    devices: tuple[int, ...] | Literal["cpu"] | None = None
    idle_seconds: float = 60.0
    max_utilization: float = 10.0
    max_other_memory_mib: int = 256
    max_temp: float | None = None
    temp_hysteresis: float = 10.0
    power_cap: float | None = None
    max_vram: float = 1.0
    windows: tuple[str, ...] = ()
    device_state: str = "auto"  # auto | nvml | none | file:PATH
    poll_interval: float = 0.25
    task_estimate: float = 60.0  # seconds a task may take when this node has not run one yet
    input_idle_seconds: float = 0.0  # keyboard/mouse this recent means the owner is there
    input_source: str = "auto"  # auto | x11 | logind | none
    # -- limits on disk, network and the executor process ----------------------------
    cache_size: int | None = None  # bytes
    min_free_disk: int = 1 << 30  # bytes free on the data directory's disk, or pause; 0: off
    max_download_rate: int | None = None  # bytes per second
    max_upload_rate: int | None = None
    sandbox: str = "auto"  # auto | require | off
    task_memory: int | None = None  # bytes of address space per executor process
    task_open_files: int = 1024
    task_output_size: int = 16 << 30  # largest file an executor may write, bytes
    status_socket: Path | None = None  # default: DATA_DIR/status.sock
    metrics_port: int | None = None  # Prometheus /metrics; None: off, 0: any free port
    metrics_addr: str = "127.0.0.1"
    # names /metrics answers to besides IP addresses, localhost and metrics_addr
    metrics_hosts: tuple[str, ...] = ()
    # where each setting came from (flag, environment, file), for error messages
    sources: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)
    # API key of the account that owns this node (SPAREGRID_OWNER_KEY); empty: none
    owner_key: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raises ConfigError listing every bad setting at once."""
        problems = [p for p in self._problems() + self._policy_problems() if p]
        if problems:
            raise ConfigError("invalid worker settings: " + "; ".join(problems))

    def _from(self, name: str, problem: str) -> str:
        source = self.sources.get(name)
        return f"{problem} (from {source})" if problem and source else problem

    def _policy_problems(self) -> list[str]:
        checks = {
            "devices": _devices_problem(self.devices),
            "idle_seconds": _range_f("idle_seconds", self.idle_seconds, 0, 86400),
            "max_utilization": _range_f("max_utilization", self.max_utilization, 0, 100),
            "max_other_memory_mib": _range(
                "max_other_memory_mib", self.max_other_memory_mib, 0, 1 << 24
            ),
            "max_temp": _range_f("max_temp", self.max_temp, 30, 110, "degrees C, e.g. 80"),
            "temp_hysteresis": _range_f("temp_hysteresis", self.temp_hysteresis, 0, 50),
            "power_cap": _range_f("power_cap", self.power_cap, 10, 5000, "watts, e.g. 250"),
            "max_vram": _range_f("max_vram", self.max_vram, 0.05, 1, "share, e.g. 0.8"),
            "windows": _windows_problem(self.windows),
            "device_state": _device_state_problem(self.device_state),
            "poll_interval": _range_f("poll_interval", self.poll_interval, 0.01, 1.0),
            "task_estimate": _positive("task_estimate", self.task_estimate),
            "input_idle_seconds": _range_f("input_idle_seconds", self.input_idle_seconds, 0, 86400),
            "input_source": _choice(
                "input_source", self.input_source, ("auto", "x11", "logind", "none")
            ),
            "cache_size": _min_size("cache_size", self.cache_size, 64 * MiB),
            "min_free_disk": _min_size("min_free_disk", self.min_free_disk, 0),
            "max_download_rate": _min_size("max_download_rate", self.max_download_rate, 64 << 10),
            "max_upload_rate": _min_size("max_upload_rate", self.max_upload_rate, 64 << 10),
            "sandbox": _choice("sandbox", self.sandbox, ("auto", "require", "off")),
            "task_memory": _min_size("task_memory", self.task_memory, 256 * MiB),
            "task_open_files": _range("task_open_files", self.task_open_files, 64, 1 << 20),
            "task_output_size": _min_size("task_output_size", self.task_output_size, MiB),
            "metrics_port": ""
            if self.metrics_port is None
            else _range("metrics_port", self.metrics_port, 0, 65535),
        }
        return [self._from(name, problem) for name, problem in checks.items()]

    def policy(self) -> PolicySettings:
        """The rules' settings; only valid settings get here."""
        return PolicySettings(
            enabled=frozenset(self.devices) if isinstance(self.devices, tuple) else None,
            idle_seconds=self.idle_seconds,
            max_utilization=self.max_utilization,
            max_other_memory=self.max_other_memory_mib * MiB,
            max_temp=self.max_temp,
            temp_hysteresis=self.temp_hysteresis,
            power_cap=self.power_cap,
            max_vram=self.max_vram,
            windows=self.parsed_windows,
            input_idle_seconds=self.input_idle_seconds,
        )

    @property
    def parsed_windows(self) -> Windows:
        return parse_windows(self.windows)

    @property
    def status_path(self) -> Path:
        return self.status_socket or self.data_dir / "status.sock"

    def _problems(self) -> list[str]:
        settable = {
            "coordinator": _address_problem(self.coordinator),
            "name": _name_problem(self.name),
            "tls_ca": _tls_problem(self.tls_ca),
            "prefetch": "" if self.prefetch is None else _range("prefetch", self.prefetch, 1, 1024),
            "data_dir": _data_dir_problem(self.data_dir),
        }
        return [self._from(name, problem) for name, problem in settable.items()] + [
            _positive("heartbeat_interval", self.heartbeat_interval),
            _positive("max_attempt_seconds", self.max_attempt_seconds),
            _range("inline_limit", self.inline_limit, 0, MAX_INLINE_OUTPUT),
            _positive("drain_timeout", self.drain_timeout),
            _positive("reconnect_initial", self.reconnect_initial),
            _positive("reconnect_max", self.reconnect_max),
            _positive("batch_window", self.batch_window),
            _range("batch_max", self.batch_max, 1, 10_000),
        ]

    @property
    def key_path(self) -> Path:
        return self.data_dir / "node.key"


def _address_problem(address: str) -> str:
    """Why `address` (HOST:PORT, or a list of coordinators, IP:PORT,IP:PORT) will not
    do, or ""."""
    try:
        for part in address.split(","):
            parse_address(part)
        grpc_target(address)
    except (ConfigError, TargetError) as exc:
        return str(exc)
    return ""


def _name_problem(name: str) -> str:
    if not name.strip() or len(name) > 64 or not name.isprintable():
        return f"node name {name!r} must be 1-64 printable characters"
    return ""


def _tls_problem(tls_ca: Path | None) -> str:
    if tls_ca is not None and not tls_ca.is_file():
        return f"TLS CA file {tls_ca} does not exist; pass a PEM file with --tls-ca"
    return ""


def _data_dir_problem(data_dir: Path) -> str:
    if data_dir.exists() and not data_dir.is_dir():
        return f"data directory {data_dir} exists but is not a directory"
    return ""


def _devices_problem(devices: tuple[int, ...] | Literal["cpu"] | None) -> str:
    if devices is None or devices == "cpu":
        return ""
    if not devices or any(isinstance(d, bool) or not isinstance(d, int) or d < 0 for d in devices):
        return f"devices must be GPU indices like 0,2, all or cpu, got {devices!r}"
    return ""


def _windows_problem(windows: tuple[str, ...]) -> str:
    try:
        parse_windows(windows)
    except WindowError as exc:
        return str(exc)
    return ""


def _device_state_problem(value: str) -> str:
    if value in ("auto", "nvml", "none") or (value.startswith("file:") and len(value) > 5):
        return ""
    return f"device_state must be auto, nvml, none or file:PATH, got {value!r}"


def _choice(name: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        return f"{name} must be one of {', '.join(choices)}, got {value!r}"
    return ""


def _range_f(name: str, value: float | None, low: float, high: float, unit: str = "") -> str:
    if value is None:
        return ""
    ok = not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)
    if not ok or not low <= value <= high:
        what = f" ({unit})" if unit else ""
        return f"{name} must be a number from {low:g} to {high:g}{what}, got {value!r}"
    return ""


def _min_size(name: str, value: int | None, low: int) -> str:
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        return f"{name} must be at least {low} bytes, got {value!r}"
    return ""


def _range(name: str, value: int, low: int, high: int) -> str:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        return f"{name} must be an integer from {low} to {high}, got {value!r}"
    return ""


def _positive(name: str, value: float | None) -> str:
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        return f"{name} must be a number of seconds above 0, got {value!r}"
    return ""
