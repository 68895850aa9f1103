"""The SQL store on SQLite (stdlib sqlite3): one file, WAL, explicit transactions."""

import os
import sqlite3
from typing import Literal

from sparegrid.coordinator.store.engine import Dialect
from sparegrid.coordinator.store.sql import SqlStore

SQLITE = Dialect(
    types={"real": "REAL", "blob": "BLOB", "serial": "INTEGER PRIMARY KEY"},
    # IMMEDIATE takes the write lock at once, so a transaction that reads and then
    # writes never fails half-way with SQLITE_BUSY.
    begin="BEGIN IMMEDIATE",
    lock_rows="",
    placeholder="?",
    integrity_error=sqlite3.IntegrityError,
)

Synchronous = Literal["FULL", "NORMAL"]


class SqliteStore(SqlStore):
    """A store in one SQLite file (or ":memory:").

    synchronous="FULL" (the default) syncs the WAL on every commit, so a committed
    transaction survives a power cut; "NORMAL" is faster and may lose the last commits
    on a power cut, never consistency.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        synchronous: Synchronous = "FULL",
        busy_timeout_ms: int = 5000,
    ) -> None:
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError(f"synchronous must be 'FULL' or 'NORMAL', not {synchronous!r}")
        self.path = os.fspath(path)
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            for pragma in (
                "journal_mode = WAL",
                f"synchronous = {synchronous}",
                f"busy_timeout = {int(busy_timeout_ms)}",
                "foreign_keys = ON",
            ):
                conn.execute(f"PRAGMA {pragma}").close()
        except BaseException:
            conn.close()
            raise
        super().__init__(conn, SQLITE)
