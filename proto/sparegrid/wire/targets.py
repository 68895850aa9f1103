"""Coordinator addresses as gRPC targets, a list of them included.

A worker or client may name several coordinators that serve from one database (one
serves, the others stand by, not listening): `10.0.0.1:50051,10.0.0.2:50051`. gRPC's
pick_first policy then connects to the first that answers and, when that one goes,
tries the list again. A list is of IP addresses (gRPC's `ipv4:`/`ipv6:` targets); for
host names, one DNS name that resolves to every coordinator does the same.
"""

import ipaddress


class TargetError(ValueError):
    """An address list gRPC cannot take; the message says why and what works."""


def split_addresses(address: str) -> list[str]:
    """The addresses a comma list names, in order; a single address is a list of one."""
    return [part.strip() for part in address.split(",") if part.strip()] or [address]


def grpc_target(address: str) -> str:
    """The gRPC target for `address`: itself, or for a comma list the ipv4:/ipv6: target
    naming each of its addresses."""
    if "," not in address:
        return address
    parts = [part.strip() for part in address.split(",")]
    families = {_family(part, address) for part in parts}
    if len(families) > 1:
        raise TargetError(f"coordinator list {address!r} mixes IPv4 and IPv6 addresses")
    return f"{families.pop()}:{','.join(parts)}"


def _family(part: str, address: str) -> str:
    host, sep, port = part.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise TargetError(f"coordinator list {address!r}: {part!r} is not IP:PORT")
    try:
        ip = ipaddress.ip_address(host.removeprefix("[").removesuffix("]"))
    except ValueError:
        raise TargetError(
            f"coordinator list {address!r}: {host!r} is not an IP address; a list names "
            "coordinators by IP (or use one DNS name that resolves to all of them)"
        ) from None
    if ip.version == 6 and not host.startswith("["):
        raise TargetError(f"coordinator list {address!r}: write IPv6 hosts as [::1]:50051")
    return "ipv4" if ip.version == 4 else "ipv6"
