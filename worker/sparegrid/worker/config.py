"""The worker's settings, validated once at start and passed explicitly."""

import socket
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_COORDINATOR = "127.0.0.1:50051"
DEFAULT_INLINE_LIMIT = 64 * 1024
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


class ConfigError(ValueError):
    """A setting is wrong; the message says which one and what to do."""


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
    prefetch: int = 2
    heartbeat_interval: float | None = None  # None: the interval the coordinator asks for
    max_attempt_seconds: float = 3600.0
    inline_limit: int = DEFAULT_INLINE_LIMIT
    log_json: bool = False
    drain_timeout: float = 30.0
    reconnect_initial: float = 0.2
    reconnect_max: float = 30.0
    batch_window: float = 0.002
    batch_max: int = 256
    # API key of the account that owns this node (SPAREGRID_OWNER_KEY); empty: none
    owner_key: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raises ConfigError listing every bad setting at once."""
        problems = [p for p in self._problems() if p]
        if problems:
            raise ConfigError("invalid worker settings: " + "; ".join(problems))

    def _problems(self) -> list[str]:
        return [
            _address_problem(self.coordinator),
            _name_problem(self.name),
            _tls_problem(self.tls_ca),
            _range("prefetch", self.prefetch, 1, 1024),
            _positive("heartbeat_interval", self.heartbeat_interval),
            _positive("max_attempt_seconds", self.max_attempt_seconds),
            _range("inline_limit", self.inline_limit, 0, MAX_MESSAGE_BYTES // 16),
            _positive("drain_timeout", self.drain_timeout),
            _positive("reconnect_initial", self.reconnect_initial),
            _positive("reconnect_max", self.reconnect_max),
            _positive("batch_window", self.batch_window),
            _range("batch_max", self.batch_max, 1, 10_000),
            _data_dir_problem(self.data_dir),
        ]

    @property
    def key_path(self) -> Path:
        return self.data_dir / "node.key"


def _address_problem(address: str) -> str:
    try:
        parse_address(address)
    except ConfigError as exc:
        return str(exc)
    return ""


def _name_problem(name: str) -> str:
    if not name.strip() or len(name) > 64 or not name.isprintable():
        return f"node name {name!r} must be 1-64 printable characters (--name)"
    return ""


def _tls_problem(tls_ca: Path | None) -> str:
    if tls_ca is not None and not tls_ca.is_file():
        return f"TLS CA file {tls_ca} does not exist; pass a PEM file with --tls-ca"
    return ""


def _data_dir_problem(data_dir: Path) -> str:
    if data_dir.exists() and not data_dir.is_dir():
        return f"data directory {data_dir} exists but is not a directory"
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
