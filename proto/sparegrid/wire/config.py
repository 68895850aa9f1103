"""Settings in layers, shared by the coordinator and the worker: defaults < a TOML file <
`SPAREGRID_*` environment variables < flags.

Every setting has one name: the TOML key (`max_vram = 0.8`), the flag (`--max-vram 0.8`)
and the environment variable (`<PREFIX><KEY>`, e.g. `SPAREGRID_WORKER_MAX_VRAM=0.8`, unless
the setting names its own). Each value is converted with a message that says which setting,
which value and where it came from; a file with an unknown key or a value of the wrong
type is refused naming the key and the file. What the values mean is checked by the daemon
that reads them.
"""

import argparse
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A setting is wrong; the message says which one, where it came from and what to do."""


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
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$", re.IGNORECASE)
_SECONDS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


# --- converters: each takes a TOML value or a string, raises ValueError saying what is wrong


def to_size(value: object) -> int:
    """Bytes from 1048576, "512MiB", "20 GB" or "10MB/s"."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    match = _SIZE.match(str(value))
    if not match:
        raise ValueError("is not a size like 512MiB, 20GB or 1048576")
    number, unit = float(match.group(1)), (match.group(2) or "").lower().removesuffix("b")
    return int(number * _UNITS[unit])


def show_size(n: int) -> str:
    """Bytes in words, to one decimal: "1.5 GiB", "300.0 KiB", "12 bytes"."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def to_duration(value: object) -> float:
    """Seconds from 30, 2.5, "90m", "24h" or "3d"."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    match = _DURATION.match(value) if isinstance(value, str) else None
    if not match:
        raise ValueError("is not a duration like 3d, 24h, 90m or 300 (seconds)")
    return float(match.group(1)) * _SECONDS[match.group(2).lower()]


def to_int(value: object) -> int:
    try:
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise ValueError
        return int(value)
    except ValueError:
        raise ValueError("is not a whole number") from None


def to_float(value: object) -> float:
    try:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ValueError
        return float(value)
    except ValueError:
        raise ValueError("is not a number") from None


def to_str(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError("is not a string")
    return value


def to_path(value: object) -> Path:
    return Path(to_str(value))


def to_bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("is not true or false")


def to_str_list(value: object) -> tuple[str, ...]:
    """A TOML list of strings, or one string of items separated by ","."""
    if isinstance(value, list):
        return tuple(to_str(v) for v in value)
    return tuple(part.strip() for part in to_str(value).split(",") if part.strip())


# --- the layers ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    name: str  # the field it sets in the daemon's settings
    convert: Callable[[object], Any]
    help: str
    key: str = ""  # TOML key and flag; default: the name
    env: str = ""  # default: the schema's prefix + KEY
    metavar: str = ""
    default: object = None  # shown in --help as [default]; None: not shown
    repeat: bool = False  # the flag may be given several times (a list in the file)

    @property
    def toml_key(self) -> str:
        return self.key or self.name

    @property
    def flag(self) -> str:
        return "--" + self.toml_key.replace("_", "-")


@dataclass(frozen=True)
class Schema:
    """A daemon's settings and where they are read from."""

    settings: tuple[Setting, ...]
    env_prefix: str  # "SPAREGRID_WORKER_"
    table: str  # a file may hold its keys in a [table] of this name, or at the top
    config_env: str  # the environment variable naming the file
    what: str  # "worker", "coordinator": in messages

    def env_name(self, s: Setting) -> str:
        return s.env or self.env_prefix + s.toml_key.upper()

    @property
    def by_key(self) -> dict[str, Setting]:
        return {s.toml_key: s for s in self.settings}

    def add_flags(
        self,
        parser: argparse.ArgumentParser,
        default_file: str = "",
        only: frozenset[str] | None = None,
    ) -> None:
        """`--config` and a flag per setting (or per setting named in `only`); a flag's
        value lands in `set_<name>`."""
        where = f"; default {default_file} when it exists" if default_file else ""
        parser.add_argument(
            "--config",
            type=Path,
            metavar="TOML",
            help=f"settings file (env {self.config_env}{where})",
        )
        for s in self.settings:
            if only is not None and s.name not in only:
                continue
            shown = f" [{_shown(s.default)}]" if s.default is not None else ""
            parser.add_argument(
                s.flag,
                dest=f"set_{s.name}",
                action="append" if s.repeat else "store",
                metavar=s.metavar or None,
                help=f"{s.help}{shown} (env {self.env_name(s)})",
            )

    def read_file(self, path: Path) -> dict[str, Any]:
        """The file's settings; ConfigError naming the file (and key) when it is wrong."""
        try:
            raw = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
        table = raw.get(self.table, raw)  # a [table], or plain keys at the top
        if not isinstance(table, dict):
            raise ConfigError(f"config file {path}: {self.table} is not a table")
        known = self.by_key
        unknown = sorted(k for k in table if k not in known)
        if unknown:
            raise ConfigError(
                f"config file {path} has unknown setting(s) {', '.join(unknown)}; "
                f"known: {', '.join(sorted(known))}"
            )
        return dict(table)

    def config_path(
        self, args: argparse.Namespace, env: Mapping[str, str], default_file: str = ""
    ) -> Path | None:
        """--config, else the environment's, else `default_file` when it exists."""
        named = getattr(args, "config", None) or env.get(self.config_env)
        if named:
            return Path(named)
        if default_file and Path(default_file).is_file():
            return Path(default_file)
        return None

    def layer(
        self, args: argparse.Namespace, env: Mapping[str, str], default_file: str = ""
    ) -> tuple[dict[str, Any], dict[str, str]]:
        """The values set by a file, the environment or a flag (flags win), converted,
        with where each came from; ConfigError listing every bad value at once."""
        path = self.config_path(args, env, default_file)
        from_file = self.read_file(path) if path else {}
        values: dict[str, Any] = {}
        sources: dict[str, str] = {}
        problems: list[str] = []
        for s in self.settings:
            flag_value = getattr(args, f"set_{s.name}", None)
            env_name = self.env_name(s)
            if flag_value is not None:
                raw, source = flag_value, s.flag
            elif env.get(env_name):
                raw, source = env[env_name], env_name
            elif s.toml_key in from_file:
                raw, source = from_file[s.toml_key], f"{s.toml_key} in {path}"
            else:
                continue
            try:
                values[s.name] = s.convert(raw)
            except (ValueError, TypeError) as exc:
                problems.append(f"{s.toml_key} {raw!r} {exc} (from {source})")
                continue
            sources[s.name] = source
        if problems:
            raise ConfigError(f"invalid {self.what} settings: " + "; ".join(problems))
        return values, sources


def _shown(default: object) -> str:
    if isinstance(default, bool):
        return "true" if default else "false"
    if isinstance(default, float):
        return f"{default:g}"
    if isinstance(default, tuple | list):
        return ", ".join(str(d) for d in default) or "none"
    return str(default) if default != "" else "none"
