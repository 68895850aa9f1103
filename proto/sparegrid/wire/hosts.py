"""Which Host headers a local HTTP endpoint answers, so that a web page cannot read it
through its visitor's browser by DNS rebinding (its own name, pointed at 127.0.0.1, is sent
as Host): an IP address, `localhost` and `*.localhost` (browsers keep those on loopback), and
the names an operator lists. The worker's /metrics uses it (`--metrics-host`)."""

import ipaddress


def host_name(header: str) -> str:
    """The name in a Host header, without its port, brackets or trailing dot, lower case."""
    name = header.strip().lower()
    if name.startswith("["):  # [v6] or [v6]:PORT
        return name[1:].partition("]")[0]
    if name.count(":") == 1:
        name = name.partition(":")[0]
    return name.rstrip(".")


def host_allowed(header: str | None, names: frozenset[str]) -> bool:
    """Whether a Host header names this server in a way no other site can: an IP address,
    localhost, or one of `names` (as `host_name` gives them)."""
    if header is None:
        return True  # not from a browser: every browser sends Host
    name = host_name(header)
    if name in names or name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def to_host(value: object) -> str:
    """A DNS name as a setting gives it, lower case; ValueError when it is not one."""
    name = str(value).strip().lower().rstrip(".")
    if not name or any(not (c.isalnum() or c in "-.") for c in name):
        raise ValueError(
            f"has {value!r}, not a host name (letters, digits, '-' and '.', e.g. "
            "metrics.example.org)"
        )
    return name
