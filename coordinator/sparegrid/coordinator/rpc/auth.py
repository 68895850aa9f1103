"""Who is calling: an account (Bearer API key) or a worker session (Session token).

Every method asks for one of them first, except those named in KEYLESS, which call
`keyless()` instead: they are open to anyone, and rate-limited by the caller's address.
"""

import ipaddress
import urllib.parse
from dataclasses import dataclass
from typing import Any

from grpc import aio

from sparegrid.coordinator.domain import Account
from sparegrid.coordinator.errors import CoordinatorError, ErrorKind
from sparegrid.coordinator.services.accounts import Accounts
from sparegrid.coordinator.services.calls import CallLimiter

# The only methods that take no credential (tests/coordinator/test_signup.py checks that
# every other one refuses a call without a key).
KEYLESS = frozenset({"/sparegrid.v1.ClientService/Signup"})


@dataclass(frozen=True)
class WorkerPrincipal:
    node_id: str


def _credential(context: aio.ServicerContext[Any, Any]) -> tuple[str, str]:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            return scheme.lower(), token.strip()
    return "", ""


def _missing() -> CoordinatorError:
    return CoordinatorError(
        ErrorKind.UNAUTHENTICATED,
        "NO_API_KEY",
        "no API key sent: set SPAREGRID_API_KEY (metadata 'authorization: Bearer <key>')",
    )


def account_of(context: aio.ServicerContext[Any, Any], accounts: Accounts) -> Account:
    scheme, token = _credential(context)
    if scheme != "bearer" or not token:
        raise _missing()
    return accounts.authenticate(token)


def caller_of(
    context: aio.ServicerContext[Any, Any], accounts: Accounts, calls: CallLimiter, cost: int = 1
) -> Account:
    """The account of a unary client call, which takes `cost` of its tokens (refused,
    TOO_MANY_CALLS, when it calls faster than services/calls.py allows)."""
    account = account_of(context, accounts)
    calls.admit(account, cost)
    return account


def admin_of(context: aio.ServicerContext[Any, Any], accounts: Accounts) -> Account:
    account = account_of(context, accounts)
    if not account.is_admin:
        raise CoordinatorError(
            ErrorKind.PERMISSION, "NOT_ADMIN", f"account {account.name!r} is not an admin"
        )
    return account


def principal_of(
    context: aio.ServicerContext[Any, Any], accounts: Accounts, sessions: dict[str, str]
) -> Account | WorkerPrincipal:
    """An account for `Bearer`, a worker for `Session` (token -> node id)."""
    scheme, token = _credential(context)
    if scheme == "session":
        node_id = sessions.get(token)
        if node_id is None:
            raise CoordinatorError(
                ErrorKind.UNAUTHENTICATED, "BAD_SESSION", "worker session token is not valid"
            )
        return WorkerPrincipal(node_id)
    return account_of(context, accounts)


def peer_address(peer: str) -> str:
    """Whom a rate limit counts the caller as: its IPv4 address, or the /64 network of its
    IPv6 address (one host is given a whole /64 and could rotate through it), without the
    port: "ipv4:10.0.0.7:52100" -> "10.0.0.7", "ipv6:[2001:db8::1]:52100" -> "2001:db8::/64".
    gRPC writes the brackets of an IPv6 peer %-escaped ("ipv6:%5B::1%5D:52100"); loopback
    ("::1") and an IPv4 address mapped into IPv6 are single hosts, named as such."""
    _, _, rest = peer.partition(":")
    rest = urllib.parse.unquote(rest)
    if rest.startswith("["):
        host = rest[1:].partition("]")[0]
        try:
            ip = ipaddress.IPv6Address(host)
        except ValueError:
            return host
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        if ip.is_loopback:
            return str(ip)
        return str(ipaddress.IPv6Network(f"{ip}/64", strict=False))
    host, sep, port = rest.rpartition(":")
    return host if sep and port.isdigit() else rest


def keyless(context: aio.ServicerContext[Any, Any], method: str) -> str:
    """For a method open without a key (one of KEYLESS): the caller's address, which its
    rate limit counts by."""
    if method not in KEYLESS:
        raise AssertionError(f"{method} is not allowed without a key (rpc/auth.py KEYLESS)")
    return peer_address(context.peer() or "")
