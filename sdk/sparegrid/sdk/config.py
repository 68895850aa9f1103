"""Where the coordinator is, how to authenticate, and the channels to it.

Resolution order, for each setting: explicit argument > environment > default; for the API
key, the default is the key `sparegrid account signup` saved for the address.
"""

import errno
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc import aio

from sparegrid.sdk.errors import AuthenticationError, SparegridError
from sparegrid.wire.targets import TargetError, grpc_target, split_addresses
from sparegrid.wire.tls import env_flag, system_roots

DEFAULT_ADDRESS = "127.0.0.1:50051"
ENV_ADDRESS = "SPAREGRID_COORDINATOR"
ENV_API_KEY = "SPAREGRID_API_KEY"
ENV_ADMIN_KEY = "SPAREGRID_ADMIN_KEY"
ENV_TLS_CA = "SPAREGRID_TLS_CA"
ENV_TLS = "SPAREGRID_TLS"  # 1: TLS with the system's trust roots (no CA file needed)
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# A link that goes silent (a laptop's Wi-Fi gone, a coordinator's machine cut off) ends
# no TCP connection: without pings a watch or a transfer waited on it for as long as TCP
# retries, never trying a second coordinator of the list. While a call is open the channel
# pings every 15 s and drops the connection when one is unanswered for 10 s; the call then
# fails UNAVAILABLE and is retried on a fresh connection. An idle channel sends none
# (coordinators permit a ping every 5 s: coordinator/server.py).
CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 15_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.ping_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 0),
    ("grpc.http2.max_pings_without_data", 0),  # a watch sends nothing after its request
)
NO_API_KEY_MESSAGE = "no API key: set SPAREGRID_API_KEY or pass api_key="
PathLike = str | os.PathLike[str]


def _env(name: str, env: Mapping[str, str] | None) -> str | None:
    value = (os.environ if env is None else env).get(name, "").strip()
    return value or None


def resolve_address(address: str | None = None, env: Mapping[str, str] | None = None) -> str:
    return address or _env(ENV_ADDRESS, env) or DEFAULT_ADDRESS


def resolve_api_key(
    api_key: str | None = None, env: Mapping[str, str] | None = None, address: str | None = None
) -> str:
    """The API key to send: the argument, else SPAREGRID_API_KEY, else the key `sparegrid
    account signup` saved for `address`; AuthenticationError(NO_API_KEY) before any call
    is made when there is none."""
    key = api_key or _env(ENV_API_KEY, env) or (saved_api_key(address, env) if address else None)
    if not key:
        raise AuthenticationError("NO_API_KEY", NO_API_KEY_MESSAGE, grpc.StatusCode.UNAUTHENTICATED)
    return key


def resolve_tls_ca(
    tls_ca: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None
) -> Path | None:
    value = tls_ca or _env(ENV_TLS_CA, env)
    return Path(value) if value else None


def resolve_tls(tls: bool | None = None, env: Mapping[str, str] | None = None) -> bool:
    """TLS with the system's trust roots: `tls`, else SPAREGRID_TLS=1."""
    return tls if tls is not None else env_flag(_env(ENV_TLS, env))


def config_home(env: Mapping[str, str] | None = None) -> Path:
    value = _env("XDG_CONFIG_HOME", env)
    return Path(value) if value else Path.home() / ".config"


def _key_files(folder: str, address: str, suffix: str, env: Mapping[str, str] | None) -> list[Path]:
    """`$XDG_CONFIG_HOME/sparegrid/<folder>/<host>_<port><suffix>` for each address of
    `address` (one, or a list of coordinators that serve from one database)."""
    base = config_home(env) / "sparegrid" / folder
    files = []
    for part in split_addresses(address):
        host, _, port = part.rpartition(":")
        files.append(base / f"{host.strip('[]') or '127.0.0.1'}_{port}{suffix}")
    return files


def _first_existing(paths: list[Path]) -> Path:
    return next((path for path in paths if path.exists()), paths[0])


def admin_key_paths(address: str, env: Mapping[str, str] | None = None) -> list[Path]:
    """`$XDG_CONFIG_HOME/sparegrid/admin/<host>_<port>.key`, written by `coordinator serve`,
    for each address of a list of coordinators (the one serving wrote its own)."""
    return _key_files("admin", address, ".key", env)


def admin_key_path(address: str, env: Mapping[str, str] | None = None) -> Path:
    """The admin key file for `address`; for a list, the first of its addresses' files that
    exists (else the first address's)."""
    return _first_existing(admin_key_paths(address, env))


def api_key_path(address: str, env: Mapping[str, str] | None = None) -> Path:
    """`$XDG_CONFIG_HOME/sparegrid/keys/<host>_<port>.key`: the API key `sparegrid account
    signup` saved for the coordinator at `address` (sent to no other address). For a list
    of coordinators (one database, so one account), the first of its addresses' files that
    exists (else the first address's)."""
    return _first_existing(_key_files("keys", address, ".key", env))


def saved_api_key(address: str, env: Mapping[str, str] | None = None) -> str | None:
    path = api_key_path(address, env)
    if not path.is_file():
        return None
    try:
        return path.read_text().strip() or None
    except OSError as exc:
        raise AuthenticationError(
            "NO_API_KEY", f"cannot read the saved API key {path}: {exc.strerror or exc}"
        ) from exc


def save_api_key(address: str, api_key: str, env: Mapping[str, str] | None = None) -> Path:
    """Writes the key for `address` (for a list, for each of its addresses), readable by
    this user only; returns the first file. FileExistsError when one is saved already (it
    is not replaced)."""
    paths = _key_files("keys", address, ".key", env)
    for path in paths:
        if path.exists():
            raise FileExistsError(errno.EEXIST, "an API key is saved already", str(path))
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(api_key + "\n")
    return paths[0]


ENV_COORDINATOR_KEY = "SPAREGRID_COORDINATOR_KEY"


def coordinator_key_paths(address: str, env: Mapping[str, str] | None = None) -> list[Path]:
    """`$XDG_CONFIG_HOME/sparegrid/coordinators/<host>_<port>.pub` for each address of
    `address`: the coordinator's public key (hex), written by `coordinator serve` or
    pinned on first use."""
    return _key_files("coordinators", address, ".pub", env)


def coordinator_key_path(address: str, env: Mapping[str, str] | None = None) -> Path:
    """The pinned key's file for `address`; for a list, the first of its addresses' files
    that exists (else the first address's)."""
    return _first_existing(coordinator_key_paths(address, env))


def _read_pin(source: str, text: str) -> bytes:
    from sparegrid.sdk.errors import VerificationError

    try:
        return bytes.fromhex(text)
    except ValueError:
        raise VerificationError(
            f"{source} is not a hex Ed25519 public key", "BAD_COORDINATOR_KEY"
        ) from None


def pin_coordinator_key(
    address: str, offered: bytes, env: Mapping[str, str] | None = None
) -> bytes:
    """The key receipts must be countersigned with: SPAREGRID_COORDINATOR_KEY (hex) when
    set, else the key pinned for this address, else `offered` (from GetInfo), pinned now.
    For a list of coordinators (they countersign with one key), each address's pin must
    hold that key, and an address without one is pinned now. VerificationError when the
    coordinator offers a key other than a pinned one."""
    from sparegrid.sdk.errors import VerificationError

    explicit = _env(ENV_COORDINATOR_KEY, env)
    if explicit:
        pins = [(ENV_COORDINATOR_KEY, _read_pin(ENV_COORDINATOR_KEY, explicit))]
        unpinned: list[Path] = []
    else:
        paths = coordinator_key_paths(address, env)
        pins = [(str(p), _read_pin(str(p), p.read_text().strip())) for p in paths if p.exists()]
        unpinned = [p for p in paths if not p.exists()]
    for source, pinned in pins:
        if offered and offered != pinned:
            raise VerificationError(
                f"coordinator {address} now offers key {offered.hex()[:16]}…, but "
                f"{pinned.hex()[:16]}… is pinned in {source}; if the operator really changed "
                "it, remove the pin and verify again",
                "COORDINATOR_KEY_CHANGED",
            )
    if not pins and len(offered) != 32:
        raise VerificationError(
            f"coordinator {address} offers no countersigning key", "NO_COORDINATOR_KEY"
        )
    if len(offered) == 32:
        for path in unpinned:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(offered.hex() + "\n")
    return pins[0][1] if pins else offered


def _read_key_file(path: Path) -> str:
    try:
        key = path.read_text().strip()
    except OSError as exc:
        raise AuthenticationError(
            "NO_ADMIN_KEY", f"cannot read admin key file {path}: {exc.strerror or exc}"
        ) from exc
    if not key:
        raise AuthenticationError("NO_ADMIN_KEY", f"admin key file {path} is empty")
    return key


def resolve_admin_key(
    address: str,
    api_key: str | None = None,
    key_file: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> str:
    """Admin key: argument > key file > SPAREGRID_ADMIN_KEY > the file `coordinator serve` wrote."""
    if api_key:
        return api_key
    if key_file:
        return _read_key_file(Path(key_file))
    from_env = _env(ENV_ADMIN_KEY, env)
    if from_env:
        return from_env
    recorded = admin_key_paths(address, env)
    for default in recorded:
        if default.is_file():
            return _read_key_file(default)
    raise AuthenticationError(
        "NO_ADMIN_KEY",
        "no admin key: pass --admin-key-file PATH, set SPAREGRID_ADMIN_KEY, "
        f"or keep the key `coordinator serve` records at {' or '.join(map(str, recorded))}",
        grpc.StatusCode.UNAUTHENTICATED,
    )


@dataclass(frozen=True)
class Connection:
    """A resolved target: address, credential, and TLS: with a CA file (`tls_ca`), with the
    system's trust roots (`tls`), or neither (plaintext)."""

    address: str
    api_key: str
    tls_ca: Path | None = None
    tls: bool = False

    @property
    def uses_tls(self) -> bool:
        return self.tls or self.tls_ca is not None

    @classmethod
    def resolve(
        cls,
        address: str | None = None,
        api_key: str | None = None,
        tls_ca: str | os.PathLike[str] | None = None,
        tls: bool | None = None,
    ) -> "Connection":
        target = resolve_address(address)
        return cls(
            target,
            resolve_api_key(api_key, address=target),
            resolve_tls_ca(tls_ca),
            resolve_tls(tls),
        )

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.api_key}"),)

    def credentials(self) -> grpc.ChannelCredentials | None:
        if self.tls_ca is None:
            if self.tls:
                return grpc.ssl_channel_credentials(root_certificates=system_roots())
            return None
        try:
            pem = self.tls_ca.read_bytes()
        except OSError as exc:
            raise SparegridError(
                "BAD_TLS_CA",
                f"cannot read TLS CA certificate {self.tls_ca}: {exc.strerror or exc}; "
                f"fix the path given by --tls-ca or {ENV_TLS_CA}",
            ) from exc
        return grpc.ssl_channel_credentials(root_certificates=pem)

    @property
    def target(self) -> str:
        """The gRPC target: the address, or for a list of coordinators (IP:PORT,IP:PORT)
        one that connects to whichever of them serves."""
        try:
            return grpc_target(self.address)
        except TargetError as exc:
            raise SparegridError("BAD_ADDRESS", str(exc)) from exc

    def channel(self) -> grpc.Channel:
        creds = self.credentials()
        if creds is None:
            return grpc.insecure_channel(self.target, options=CHANNEL_OPTIONS)
        return grpc.secure_channel(self.target, creds, options=CHANNEL_OPTIONS)

    def aio_channel(self) -> aio.Channel:
        creds = self.credentials()
        if creds is None:
            return aio.insecure_channel(self.target, options=CHANNEL_OPTIONS)
        return aio.secure_channel(self.target, creds, options=CHANNEL_OPTIONS)
