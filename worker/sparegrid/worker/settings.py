"""The worker's settings from three layers: a TOML file < SPAREGRID_WORKER_* environment <
flags, each value converted with a message that says where it came from, then validated
once as a whole by `WorkerConfig`.

Every setting has one name: the TOML key (`max_vram = 0.8`), the flag (`--max-vram 0.8`)
and the environment variable (`SPAREGRID_WORKER_MAX_VRAM=0.8`), except the few shared with
the client tools (`SPAREGRID_COORDINATOR`, `SPAREGRID_TLS_CA`).
"""

import argparse
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sparegrid.worker.config import ConfigError, WorkerConfig

ENV_CONFIG = "SPAREGRID_WORKER_CONFIG"
ENV_OWNER_KEY = "SPAREGRID_OWNER_KEY"
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*(/s)?\s*$", re.IGNORECASE)
_UNITS = {
    "": 1,
    "k": 1e3,
    "m": 1e6,
    "g": 1e9,
    "t": 1e12,
    "ki": 1 << 10,
    "mi": 1 << 20,
    "gi": 1 << 30,
    "ti": 1 << 40,
}


def parse_size(value: object) -> int:
    """Bytes from 1048576, "512MiB", "20 GB" or "10MB/s"."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    match = _SIZE.match(str(value))
    if not match:
        raise ValueError("is not a size like 512MiB, 20GB or 1048576")
    number, unit = float(match.group(1)), (match.group(2) or "").lower().removesuffix("b")
    return int(number * _UNITS[unit])


def _int(value: object) -> int:
    try:
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise ValueError
        return int(value)
    except ValueError:
        raise ValueError("is not a whole number") from None


def _prefetch(value: object) -> int | None:
    if isinstance(value, str) and value.strip().lower() == "auto":
        return None
    return _int(value)


def _float(value: object) -> float:
    try:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ValueError
        return float(value)
    except ValueError:
        raise ValueError("is not a number") from None


def _str(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError("is not a string")
    return value


def _path(value: object) -> Path:
    return Path(_str(value))


def _bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("is not true or false")


def _devices(value: object) -> tuple[int, ...] | None:
    if isinstance(value, list):
        return tuple(_int(v) for v in value)
    text = str(value).strip().lower()
    if text == "all":
        return None
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ValueError("is not a list of device indices like 0,2 (or all)") from None


def _windows(value: object) -> tuple[str, ...]:
    if isinstance(value, list):
        return tuple(_str(v) for v in value)
    return tuple(part.strip() for part in str(value).split(";") if part.strip())


def _log_format(value: object) -> bool:
    text = str(value).lower()
    if text not in ("text", "json"):
        raise ValueError("must be text or json")
    return text == "json"


@dataclass(frozen=True)
class Setting:
    name: str  # the WorkerConfig field
    convert: Callable[[object], Any]
    help: str
    key: str = ""  # TOML key and flag; default: the name
    env: str = ""  # default SPAREGRID_WORKER_<KEY>
    metavar: str = ""

    @property
    def toml_key(self) -> str:
        return self.key or self.name

    @property
    def flag(self) -> str:
        return "--" + self.toml_key.replace("_", "-")

    @property
    def env_name(self) -> str:
        return self.env or "SPAREGRID_WORKER_" + self.toml_key.upper()


SETTINGS = (
    Setting(
        "coordinator", _str, "coordinator address", env="SPAREGRID_COORDINATOR", metavar="HOST:PORT"
    ),
    Setting("data_dir", _path, "node key, cache and outbox", metavar="DIR"),
    Setting("name", _str, "label for this node (default: host name)", metavar="NAME"),
    Setting("tls_ca", _path, "CA certificate for TLS", env="SPAREGRID_TLS_CA", metavar="PEM"),
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
    Setting("devices", _devices, "devices to use, e.g. 0,2 (default: all)", metavar="LIST"),
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
)
_BY_KEY = {s.toml_key: s for s in SETTINGS}


def add_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", type=Path, metavar="TOML", help=f"settings file (env {ENV_CONFIG})"
    )
    for s in SETTINGS:
        parser.add_argument(
            s.flag,
            dest=f"set_{s.name}",
            metavar=s.metavar or None,
            help=f"{s.help} (env {s.env_name})",
        )
    parser.add_argument(
        "--log-json",
        action="store_const",
        const="json",
        dest="set_log_json",
        help="same as --log-format json",
    )


def read_file(path: Path) -> dict[str, Any]:
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    table = raw.get("worker", raw)  # a [worker] table, or plain keys at the top
    unknown = sorted(k for k in table if k not in _BY_KEY)
    if unknown:
        raise ConfigError(
            f"config file {path} has unknown setting(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(_BY_KEY))}"
        )
    return dict(table)


def layered(args: argparse.Namespace, env: Mapping[str, str]) -> WorkerConfig:
    """Defaults < TOML file < environment < flags; raises ConfigError saying what and where."""
    config_path = getattr(args, "config", None) or env.get(ENV_CONFIG)
    from_file = read_file(Path(config_path)) if config_path else {}
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    problems: list[str] = []
    for s in SETTINGS:
        flag_value = getattr(args, f"set_{s.name}", None)
        if flag_value is not None:
            raw, source = flag_value, s.flag
        elif env.get(s.env_name):
            raw, source = env[s.env_name], s.env_name
        elif s.toml_key in from_file:
            raw, source = from_file[s.toml_key], f"{s.toml_key} in {config_path}"
        else:
            continue
        try:
            values[s.name] = s.convert(raw)
        except (ValueError, TypeError) as exc:
            problems.append(f"{s.toml_key} {raw!r} {exc} (from {source})")
            continue
        sources[s.name] = source
    if problems:
        raise ConfigError("invalid worker settings: " + "; ".join(problems))
    if "log_json" not in values and _bool(env.get("SPAREGRID_LOG_JSON", "") or "0"):
        values["log_json"] = True  # the older name, still honoured
    values["owner_key"] = _owner_key(values.pop("owner_key_file", None), env)
    return WorkerConfig(**values, sources=sources)


def _owner_key(path: Path | None, env: Mapping[str, str]) -> str:
    """The owner's API key: from --owner-key-file, else SPAREGRID_OWNER_KEY; "" for none."""
    if path is None:
        return env.get(ENV_OWNER_KEY, "").strip()
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read owner key file {path}: {exc.strerror or exc}") from None
