"""Storage backends behind one interface: open_store picks one from a URL."""

import re
from urllib.parse import parse_qs

from sparegrid.coordinator.store.base import (
    BalanceOverflow,
    Conflict,
    InsufficientFunds,
    Store,
    StoreError,
)
from sparegrid.coordinator.store.memory import MemoryStore

__all__ = [
    "COORDINATOR_KEY",
    "BalanceOverflow",
    "Conflict",
    "InsufficientFunds",
    "MemoryStore",
    "Store",
    "StoreError",
    "open_store",
    "peek_meta",
]

# what `meta` holds the coordinators' countersigning public key under (hex)
COORDINATOR_KEY = "coordinator_key"

ACCEPTED = (
    "'memory:', 'sqlite:///relative/path.db', 'sqlite:////absolute/path.db'"
    " (optionally '?synchronous=NORMAL', '?check=full' or '?check=off'), a plain file path,"
    " or 'postgresql://user@host:port/database'"
)

# A scheme is two letters or more, so a Windows drive ("C:\\...") reads as a path.
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]+):")


def _kind(url: str) -> str:
    """Which store a URL names: "memory", "sqlite", "postgres", "file" (a plain path), or
    "" (none: an unknown scheme, or nothing)."""
    match = _SCHEME.match(url)
    scheme = match.group(1).lower() if match else ""
    if url == "memory:":
        return "memory"
    if scheme == "sqlite" and url.startswith("sqlite:///"):
        return "sqlite"
    if scheme in ("postgresql", "postgres") and url.startswith(f"{scheme}://"):
        return "postgres"
    return "" if scheme or not url else "file"


def url_problem(url: str) -> str:
    """Why `url` names no store open_store can open ("" when it does)."""
    return "" if _kind(url) else f"unknown store URL {url!r}; use {ACCEPTED}"


def open_store(url: str, exclusive: bool = False) -> Store:
    """Opens the store a URL names; see ACCEPTED. Raises ValueError for anything else.

    As in SQLAlchemy, the path of a sqlite URL follows its third slash: four slashes
    make it absolute. exclusive (a serving coordinator): on PostgreSQL, the store holds
    the coordinators' lock on the database, StoreTaken while another coordinator does; on
    SQLite, a lock on the file, StoreError while another coordinator holds it.
    """
    kind = _kind(url)
    if kind == "memory":
        return MemoryStore()
    if kind == "sqlite":
        return _open_sqlite(url.removeprefix("sqlite:///"), exclusive)
    if kind == "postgres":
        from sparegrid.coordinator.store.postgres import PostgresStore

        return PostgresStore(url, exclusive=exclusive)
    if not kind:
        raise ValueError(url_problem(url))
    from sparegrid.coordinator.store.sqlite import SqliteStore

    return SqliteStore(url, exclusive=exclusive)


def peek_meta(url: str, name: str) -> str:
    """A value the database holds for all its coordinators, read without taking the
    coordinators' lock or migrating anything (a coordinator standing by, while another
    serves); "" when there is none. Only PostgreSQL is shared by coordinators."""
    if _kind(url) != "postgres":
        return ""
    from sparegrid.coordinator.store.postgres import peek_meta as peek

    return peek(url, name)


def _open_sqlite(rest: str, exclusive: bool) -> Store:
    from sparegrid.coordinator.store.sqlite import SqliteStore

    path, _, query = rest.partition("?")
    options = {k: v[-1] for k, v in parse_qs(query, strict_parsing=bool(query)).items()}
    synchronous = options.pop("synchronous", "FULL").upper()
    check = options.pop("check", "quick").lower()
    if options or not path or synchronous not in ("FULL", "NORMAL"):
        raise ValueError(f"bad sqlite store URL {'sqlite:///' + rest!r}; use {ACCEPTED}")
    if check not in ("quick", "full", "off"):
        raise ValueError(f"bad sqlite store URL {'sqlite:///' + rest!r}; use {ACCEPTED}")
    return SqliteStore(
        path,
        synchronous="FULL" if synchronous == "FULL" else "NORMAL",
        check="quick" if check == "quick" else "full" if check == "full" else "off",
        exclusive=exclusive,
    )
