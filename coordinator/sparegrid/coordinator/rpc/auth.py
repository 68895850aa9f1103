"""Who is calling: an account (Bearer API key) or a worker session (Session token)."""

from dataclasses import dataclass
from typing import Any

from grpc import aio

from sparegrid.coordinator.domain import Account
from sparegrid.coordinator.errors import CoordinatorError, ErrorKind
from sparegrid.coordinator.services.accounts import Accounts


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
