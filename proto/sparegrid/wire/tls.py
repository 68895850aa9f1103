"""TLS for clients and workers, and what to tell a user whose connection fails.

`system_roots()` is the machine's trust store, so that a coordinator with a publicly
trusted certificate needs no `--tls-ca`. `probe(address)` finds out what listens at an
address (nothing, a TLS server, a plaintext HTTP/2 server, something else) without
sending any credential, and `hint()` turns that into the likely cause of a failure: a
plaintext client against a TLS coordinator, a TLS client against a plaintext one, or a
wrong address.
"""

import enum
import socket
import ssl
from pathlib import Path

from sparegrid.wire.targets import split_addresses

_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_H2_SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # an empty SETTINGS frame
_FRAME_SETTINGS = 0x4


def system_roots() -> bytes | None:
    """The system's CA certificates as PEM ($SSL_CERT_FILE or OpenSSL's default file or
    directory); None where none are found (gRPC then uses the roots it ships)."""
    paths = ssl.get_default_verify_paths()
    for candidate in (paths.cafile, paths.openssl_cafile):
        if candidate and Path(candidate).is_file():
            return Path(candidate).read_bytes()
    for folder in (paths.capath, paths.openssl_capath):
        if folder and Path(folder).is_dir():
            pems = [
                p.read_bytes()
                for p in sorted(Path(folder).iterdir())
                if p.suffix in (".pem", ".crt") and p.is_file()
            ]
            if pems:
                return b"\n".join(pems)
    return None


class Speaks(enum.StrEnum):
    NOTHING = "nothing"  # refused, unreachable, or the name does not resolve
    TLS = "tls"
    PLAINTEXT = "plaintext"  # HTTP/2 without TLS: a plaintext gRPC server
    OTHER = "other"  # something that is neither


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


def answering(address: str, timeout: float = 2.0) -> tuple[str, Speaks]:
    """The first address of `address` (one, or a list of coordinators of which one serves
    and the others stand by, not listening) where anything listens, and what it speaks;
    `address` and NOTHING when nothing listens at any of them."""
    for part in split_addresses(address):
        speaks = probe(part, timeout)
        if speaks is not Speaks.NOTHING:
            return part, speaks
    return address, Speaks.NOTHING


def probe(address: str, timeout: float = 2.0) -> Speaks:
    """What listens at HOST:PORT (for a list, at the first of its addresses where anything
    does). Sends a TLS hello, or an HTTP/2 preface; no credential."""
    if "," in address:
        return answering(address, timeout)[1]
    try:
        host, port = _split(address)
        with socket.create_connection((host, port), timeout=timeout) as sock:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            context.set_alpn_protocols(["h2"])
            try:
                with context.wrap_socket(sock, server_hostname=host):
                    return Speaks.TLS
            except (ssl.SSLError, OSError):
                pass
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(_H2_PREFACE + _H2_SETTINGS)
            head = _read(sock, 9)
    except (OSError, ValueError):
        return Speaks.NOTHING
    return Speaks.PLAINTEXT if len(head) == 9 and head[3] == _FRAME_SETTINGS else Speaks.OTHER


def _read(sock: socket.socket, size: int) -> bytes:
    data = b""
    try:
        while len(data) < size:
            chunk = sock.recv(size - len(data))
            if not chunk:
                break
            data += chunk
    except OSError:
        pass
    return data


def _form(parts: list[str]) -> str:
    """What is wrong with how an address is written, when that is why nothing answered: a
    URL's scheme (gRPC reads `http://h:1` as a host name, "Misformatted domain name"), or
    no port (gRPC then dials 443)."""
    for part in parts:
        scheme, sep, rest = part.partition("://")
        if sep and scheme.lower() in ("http", "https", "grpc", "grpcs"):
            return (
                f"{part} is a URL; a coordinator's address is HOST:PORT, without "
                f"{scheme}:// (--coordinator {rest.rstrip('/')})"
            )
        if ":" not in part:
            return (
                f"{part} names no port; a coordinator's address is HOST:PORT (--coordinator "
                f"{part}:50051 for one serving on the default port)"
            )
    return ""


def hint(address: str, using_tls: bool, speaks: Speaks | None = None) -> str:
    """The likely cause of a failed connection to a coordinator, and what to do; "" when
    the probe finds nothing wrong with the address or the transport. For a list, the
    hint is about the first of its addresses where anything listens (with `speaks` given,
    pass the address and what it speaks as `answering` found them)."""
    if speaks is None:
        address, speaks = answering(address)
    if speaks is Speaks.NOTHING:
        parts = split_addresses(address)
        if form := _form(parts):
            return form
        where = f"any of {', '.join(parts)}" if len(parts) > 1 else address
        return (
            f"nothing answers at {where}: is the address (and its port) right? Start a "
            "coordinator with `sparegrid coordinator serve`, or point --coordinator or "
            "$SPAREGRID_COORDINATOR at a running one (a coordinator standing by listens "
            "only once it takes over: give every coordinator's address, A,B)"
        )
    if speaks is Speaks.TLS and not using_tls:
        return (
            f"the coordinator at {address} speaks TLS, and this side plaintext: pass --tls "
            "(a publicly trusted certificate) or --tls-ca PEM (or set SPAREGRID_TLS=1 or "
            "SPAREGRID_TLS_CA)"
        )
    if speaks is Speaks.PLAINTEXT and using_tls:
        return (
            f"the coordinator at {address} speaks plaintext, and this side TLS: drop --tls "
            "and --tls-ca (SPAREGRID_TLS, SPAREGRID_TLS_CA), or serve TLS with "
            "`coordinator serve --tls-cert PEM --tls-key PEM`"
        )
    if speaks is Speaks.OTHER:
        return (
            f"something listens at {address}, but not a Sparegrid coordinator: is the port "
            "right? (a coordinator serves on 50051 unless --listen says otherwise)"
        )
    if speaks is Speaks.TLS:
        return (
            f"the coordinator at {address} speaks TLS, but its certificate was not accepted: "
            "pass --tls-ca with the CA that signed it, or check that the certificate names "
            "this host"
        )
    return ""


def env_flag(value: str | None) -> bool:
    """SPAREGRID_TLS=1|true|yes|on."""
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def client_credentials_roots(tls_ca: Path | None) -> bytes | None:
    """Root certificates for a TLS channel: the CA file when given, else the system's."""
    return tls_ca.read_bytes() if tls_ca is not None else system_roots()
