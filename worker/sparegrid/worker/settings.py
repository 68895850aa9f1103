"""The worker's settings from three layers: a TOML file < SPAREGRID_WORKER_* environment <
flags, each value converted with a message that says where it came from, then validated
once as a whole by `WorkerConfig`.

Every setting has one name: the TOML key (`max_vram = 0.8`), the flag (`--max-vram 0.8`)
and the environment variable (`SPAREGRID_WORKER_MAX_VRAM=0.8`), except the few shared with
the client tools (`SPAREGRID_COORDINATOR`, `SPAREGRID_TLS_CA`). The layering itself is
`sparegrid.wire.config`, shared with the coordinator.
"""

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from sparegrid.wire.config import (
    ConfigError,
    Schema,
    Setting,
    to_bool,
    to_float,
    to_int,
    to_path,
    to_size,
    to_str,
    to_str_list,
)
from sparegrid.wire.hosts import to_host
from sparegrid.worker.config import WorkerConfig

ENV_CONFIG = "SPAREGRID_WORKER_CONFIG"
ENV_OWNER_KEY = "SPAREGRID_OWNER_KEY"
parse_size = to_size
_int, _float, _str, _path, _bool = to_int, to_float, to_str, to_path, to_bool


def _prefetch(value: object) -> int | None:
    if isinstance(value, str) and value.strip().lower() == "auto":
        return None
    return _int(value)


def _devices(value: object) -> tuple[int, ...] | Literal["cpu"] | None:
    if isinstance(value, list):
        if [str(v).strip().lower() for v in value] == ["cpu"]:
            return "cpu"
        return tuple(_int(v) for v in value)
    text = str(value).strip().lower()
    if text == "all":
        return None
    if text == "cpu":
        return "cpu"
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ValueError("is not a list of GPU indices like 0,2, all or cpu") from None


def _windows(value: object) -> tuple[str, ...]:
    if isinstance(value, list):
        return tuple(_str(v) for v in value)
    return tuple(part.strip() for part in str(value).split(";") if part.strip())


def _hosts(value: object) -> tuple[str, ...]:
    return tuple(to_host(name) for name in to_str_list(value))


def _log_format(value: object) -> bool:
    text = str(value).lower()
    if text not in ("text", "json"):
        raise ValueError("must be text or json")
    return text == "json"


SETTINGS = (
    Setting(
        "coordinator", _str, "coordinator address", env="SPAREGRID_COORDINATOR", metavar="HOST:PORT"
    ),
    Setting("data_dir", _path, "node key, cache and outbox", metavar="DIR"),
    Setting("name", _str, "label for this node (default: host name)", metavar="NAME"),
    Setting("tls_ca", _path, "CA certificate for TLS", env="SPAREGRID_TLS_CA", metavar="PEM"),
    Setting(
        "tls",
        _bool,
        "TLS with the system's trust roots, for a publicly trusted certificate (true or false)",
        env="SPAREGRID_TLS",
        metavar="BOOL",
    ),
    Setting(
        "prefetch",
        _prefetch,
        "tasks held per device, or auto: sized from task time and round trip (default auto)",
        metavar="N",
    ),
    Setting(
        "log_json",
        _log_format,
        "log lines as text or json (default: text)",
        key="log_format",
        metavar="FORMAT",
    ),
    Setting(
        "devices",
        _devices,
        "GPUs to use, e.g. 0,2 (default: all); cpu lends the CPU of a machine without a GPU "
        "(the worker will not start there without it)",
        metavar="LIST",
    ),
    Setting(
        "idle_seconds",
        _float,
        "seconds the GPU must be idle before work starts (default 60)",
        metavar="S",
    ),
    Setting(
        "max_utilization",
        _float,
        "GPU %% busy from others that counts as the owner using it (default 10)",
        metavar="PCT",
    ),
    Setting(
        "max_other_memory_mib",
        _int,
        "GPU memory others may use before the GPU counts as theirs (default 256)",
        metavar="MIB",
    ),
    Setting("max_temp", _float, "pause at this temperature, in C (default: no limit)", metavar="C"),
    Setting(
        "temp_hysteresis",
        _float,
        "resume this many degrees below --max-temp (default 10)",
        metavar="C",
    ),
    Setting(
        "power_cap",
        _float,
        "board power limit in watts (set through NVML as root; else pause above it)",
        metavar="W",
    ),
    Setting(
        "max_vram",
        _float,
        "share of each GPU's memory tasks may use, e.g. 0.8 (default 1)",
        metavar="SHARE",
    ),
    Setting(
        "windows",
        _windows,
        "when to work, e.g. 'mon-fri 22:00-07:00; sat-sun' (default: always)",
        metavar="WINDOWS",
    ),
    Setting(
        "device_state",
        _str,
        "where GPU readings come from: auto, nvml, none or file:PATH",
        metavar="SOURCE",
    ),
    Setting(
        "input_idle_seconds",
        _float,
        "keyboard or mouse used this recently pauses work (default 0: off)",
        metavar="S",
    ),
    Setting(
        "input_source",
        _str,
        "where input idle time comes from: auto, x11, logind or none",
        metavar="SOURCE",
    ),
    Setting("poll_interval", _float, "seconds between GPU readings (default 0.25)", metavar="S"),
    Setting(
        "task_estimate",
        _float,
        "seconds a task may take before this node has timed one (default 60)",
        metavar="S",
    ),
    Setting(
        "max_attempt_seconds",
        _float,
        "longest a task may run before it is stopped (default 3600)",
        metavar="S",
    ),
    Setting(
        "cache_size",
        parse_size,
        "largest size of the input cache, e.g. 20GiB (default: no limit)",
        metavar="SIZE",
    ),
    Setting(
        "min_free_disk",
        parse_size,
        "pause while the disk of DATA_DIR has less free space, e.g. 5GiB (default 1GiB; 0: off)",
        metavar="SIZE",
    ),
    Setting("max_download_rate", parse_size, "download limit, e.g. 10MB/s", metavar="RATE"),
    Setting("max_upload_rate", parse_size, "upload limit, e.g. 5MB/s", metavar="RATE"),
    Setting(
        "sandbox", _str, "executor isolation: auto, require or off (default auto)", metavar="MODE"
    ),
    Setting(
        "task_memory",
        parse_size,
        "address-space limit of an executor process, e.g. 32GiB",
        metavar="SIZE",
    ),
    Setting("task_open_files", _int, "open files an executor may hold (default 1024)", metavar="N"),
    Setting(
        "task_output_size",
        parse_size,
        "largest file an executor may write (default 16GiB)",
        metavar="SIZE",
    ),
    Setting(
        "owner_key_file",
        _path,
        "file holding the API key of the account that owns this node: replicas never go to two nodes of one owner, and the owner sees the node's credit with `worker credit` (or env SPAREGRID_OWNER_KEY holding the key)",
        metavar="FILE",
    ),
    Setting(
        "status_socket",
        _path,
        "local socket for `worker status` (default DATA_DIR/status.sock)",
        metavar="PATH",
    ),
    Setting(
        "metrics_port",
        _int,
        "serve Prometheus metrics over HTTP on this port (0 picks one, written to "
        "DATA_DIR/metrics.addr; default: off)",
        metavar="PORT",
    ),
    Setting("metrics_addr", _str, "address for --metrics-port (default 127.0.0.1)", metavar="HOST"),
    Setting(
        "metrics_hosts",
        _hosts,
        "a DNS name Prometheus scrapes /metrics by (repeat for more; a comma list in the "
        "environment, a list in the file). IP addresses, localhost and --metrics-addr are "
        "always answered; other names are refused, so a web page that rebinds its own name "
        "to this address cannot read the metrics",
        key="metrics_host",
        env="SPAREGRID_WORKER_METRICS_HOSTS",
        metavar="NAME",
        repeat=True,
    ),
)
SCHEMA = Schema(SETTINGS, "SPAREGRID_WORKER_", "worker", ENV_CONFIG, "worker")


def add_flags(parser: argparse.ArgumentParser) -> None:
    SCHEMA.add_flags(parser)
    parser.add_argument(
        "--log-json",
        action="store_const",
        const="json",
        dest="set_log_json",
        help="same as --log-format json",
    )


def read_file(path: Path) -> dict[str, Any]:
    return SCHEMA.read_file(path)


def layered(args: argparse.Namespace, env: Mapping[str, str]) -> WorkerConfig:
    """Defaults < TOML file < environment < flags; raises ConfigError saying what and where."""
    values, sources = SCHEMA.layer(args, env)
    if "log_json" not in values and _bool(env.get("SPAREGRID_LOG_JSON", "") or "0"):
        values["log_json"] = True  # the older name, still honoured
    values["owner_key"] = _owner_key(values.pop("owner_key_file", None), env)
    return WorkerConfig(**values, sources=sources)


def _owner_key(path: Path | None, env: Mapping[str, str]) -> str:
    """The owner's API key: from --owner-key-file, else SPAREGRID_OWNER_KEY; "" for none."""
    if path is None:
        return env.get(ENV_OWNER_KEY, "").strip()
    return read_owner_key(path)


def read_owner_key(path: Path) -> str:
    """The API key in an owner key file; ConfigError when it cannot be read. A file other
    users may read is said on stderr (the key acts as the account: its credit, its jobs),
    not refused: a container's secret files are often mode 0444."""
    try:
        key = path.read_text().strip()
        mode = path.stat().st_mode & 0o777
    except OSError as exc:
        raise ConfigError(f"cannot read owner key file {path}: {exc.strerror or exc}") from None
    if mode & 0o077:
        print(
            f"warning: owner key file {path} is readable by other users (mode {mode:o}); "
            f"anyone who reads it acts as your account: chmod 600 {path}",
            file=sys.stderr,
        )
    return key
