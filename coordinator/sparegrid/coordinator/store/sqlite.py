"""The SQL store on SQLite (stdlib sqlite3): one file, WAL, explicit transactions.

Two checks guard what a coordinator has acknowledged. At open, `PRAGMA quick_check` (or
`integrity_check`) reads the whole file and refuses a damaged one. And every transaction
that writes counts itself in the database (`commit_seq`) and, once committed, writes the
count to a small file beside it, `<db>-seq`: if the database later opens with a lower
count, commits were lost after they were made (a -wal file torn, lost or left behind
when the database was copied, a disk or network filesystem that does not honour fsync),
results that were acknowledged and paid may be gone, and the store refuses to open until
the operator restores a backup or deletes `<db>-seq` to go on with what it holds.

The count costs one UPDATE in each writing transaction and one small write() after it,
never an fsync (about 5 + 4 us on the development VM, against a group commit's fsync of a
millisecond or more): the file is a witness, not a journal.

And before each writing transaction commits, a stat() of the path checks that the file
there is still the one the store opened. A database file removed (an `rm -rf` of the data
directory, a tmp cleaner) or replaced under a running coordinator took every later commit
into a file that vanishes at exit, acknowledged as if it were kept; now the commit fails
and the coordinator refuses calls (STORE_UNAVAILABLE) until it is restarted.

A serving coordinator (exclusive) holds an flock on `<db>-lock` for as long as the store is
open (the kernel drops it when the process ends, SIGKILL included): a second `coordinator
serve` on the same file, which served beside the first, each dispatching the same tasks
from its own memory, now stops at start naming the first one's process.
"""

import fcntl
import logging
import os
import sqlite3
from typing import Literal

from sparegrid.coordinator.store.base import StoreError, StoreUnavailable
from sparegrid.coordinator.store.engine import Dialect
from sparegrid.coordinator.store.sql import SqlStore

log = logging.getLogger("sparegrid.coordinator.store")

SQLITE = Dialect(
    types={
        "real": "REAL",
        "blob": "BLOB",
        "serial": "INTEGER PRIMARY KEY",
        "now": "CAST(strftime('%s', 'now') AS REAL)",
    },
    # IMMEDIATE takes the write lock at once, so a transaction that reads and then
    # writes never fails half-way with SQLITE_BUSY.
    begin="BEGIN IMMEDIATE",
    lock_rows="",
    placeholder="?",
    integrity_error=sqlite3.IntegrityError,
    error=sqlite3.Error,
)

Synchronous = Literal["FULL", "NORMAL"]
Check = Literal["quick", "full", "off"]
_PRAGMA = {"quick": "quick_check", "full": "integrity_check"}
_SEQ_WIDTH = 20


class StoreDamaged(StoreError):
    """The database file is damaged, or lost commits it had made; it is not opened."""


class SqliteStore(SqlStore):
    """A store in one SQLite file (or ":memory:").

    synchronous="FULL" (the default) syncs the WAL on every commit, so a committed
    transaction survives a power cut; "NORMAL" is faster and may lose the last commits
    on a power cut, never consistency (and the lost-commit check then stays quiet only
    while the machine stays up). check="quick" (the default) runs `PRAGMA quick_check`
    at open, "full" `integrity_check`, "off" neither.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        synchronous: Synchronous = "FULL",
        busy_timeout_ms: int = 5000,
        check: Check = "quick",
        exclusive: bool = False,
    ) -> None:
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError(f"synchronous must be 'FULL' or 'NORMAL', not {synchronous!r}")
        if check not in ("quick", "full", "off"):
            raise ValueError(f"check must be 'quick', 'full' or 'off', not {check!r}")
        self.path = os.fspath(path)
        self._seq_fd = -1
        self._lock_fd = _take_lock(self.path) if exclusive and self.path != ":memory:" else -1
        self._seq = 0  # write transactions committed, as far as this store knows
        self._pending: int | None = None  # the count the transaction being committed takes
        self._changes = 0
        self._counting = False
        try:
            conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        except BaseException:
            self._release_lock()
            raise
        try:
            for pragma in (
                "journal_mode = WAL",
                f"synchronous = {synchronous}",
                f"busy_timeout = {int(busy_timeout_ms)}",
                "foreign_keys = ON",
            ):
                conn.execute(f"PRAGMA {pragma}").close()
            if check != "off":
                self._check(conn, _PRAGMA[check])
        except sqlite3.DatabaseError as exc:
            conn.close()
            self._release_lock()
            raise StoreDamaged(
                f"{self.path} cannot be read as a SQLite database ({exc}): restore it from a "
                "backup (README, 'The data directory')"
            ) from exc
        except BaseException:
            conn.close()
            self._release_lock()
            raise
        self._conn_sqlite = conn
        self._file = None if self.path == ":memory:" else _identity(self.path)
        super().__init__(conn, SQLITE)
        try:
            self._start_counting()
        except BaseException:
            self.close()
            raise

    def _check(self, conn: sqlite3.Connection, pragma: str) -> None:
        """Refuses a file whose pages or indexes are damaged."""
        if self.path == ":memory:":
            return
        rows = [row[0] for row in conn.execute(f"PRAGMA {pragma}(20)").fetchall()]
        if rows != ["ok"]:
            problems = "; ".join(str(r) for r in rows[:5])
            raise StoreDamaged(
                f"{self.path} is damaged (PRAGMA {pragma}: {problems}): restore it from a "
                "backup taken with the coordinator stopped (README, 'The data directory')"
            )

    # commits counted in the database and witnessed beside it

    @property
    def seq_path(self) -> str:
        return self.path + "-seq"

    def _start_counting(self) -> None:
        with self.transaction():
            self._run(
                "CREATE TABLE IF NOT EXISTS commit_seq"
                " (id INTEGER PRIMARY KEY CHECK (id = 1), seq INTEGER NOT NULL)"
            )
            self._run("INSERT INTO commit_seq (id, seq) VALUES (1, 0) ON CONFLICT (id) DO NOTHING")
            ((held,),) = self._query("SELECT seq FROM commit_seq WHERE id = 1")
        if self.path == ":memory:":
            return
        self._seq = int(held)
        witnessed = self._witnessed()
        if witnessed is not None and witnessed > self._seq:
            raise StoreDamaged(
                f"{self.path} holds {self._seq} committed write transactions, but "
                f"{witnessed} were made ({self.seq_path}): the last {witnessed - self._seq} "
                "were lost after they were committed, and results acknowledged and paid may "
                "be gone (a -wal file torn or left behind, or a disk or network filesystem "
                "that does not honour fsync; README, 'The data directory'). Restore the data "
                f"directory from a backup, or delete {self.seq_path} to go on with what the "
                "database holds"
            )
        self._seq_fd = os.open(self.seq_path, os.O_RDWR | os.O_CREAT, 0o600)
        self._witness()
        self._counting = True

    def _witnessed(self) -> int | None:
        """The count the file beside the database holds; None if absent or unreadable."""
        try:
            with open(self.seq_path, "rb") as f:
                text = f.read(64).strip()
        except FileNotFoundError:
            return None
        if text.isdigit() and len(text) <= _SEQ_WIDTH:
            return int(text)
        log.warning("%s holds %r, not a commit count; writing it again", self.seq_path, text)
        return None

    def _witness(self) -> None:
        os.pwrite(self._seq_fd, f"{self._seq:0{_SEQ_WIDTH}d}\n".encode(), 0)

    def _began(self) -> None:
        self._changes = self._conn_sqlite.total_changes
        self._pending = None

    def reconnect(self) -> None:
        self._check_file()

    def _check_file(self) -> None:
        """Raises StoreUnavailable if the database file is no longer at its path."""
        if self._file is None or _identity(self.path) == self._file:
            return
        raise StoreUnavailable(
            f"the database file {self.path} was removed or replaced while the coordinator "
            "ran, and what it committed there would be lost when it exits: restore the data "
            "directory from a backup and restart (until it exits, this process still holds "
            f"the removed file and its -wal open: ls -l /proc/{os.getpid()}/fd)"
        )

    def _committing(self) -> None:
        if self._conn_sqlite.total_changes != self._changes:
            self._check_file()
        if self._counting and self._conn_sqlite.total_changes != self._changes:
            # seq + 1 rather than this store's count: another process writing the same file
            # counts in too, and this store's own count stays at or below the file's
            self._run("UPDATE commit_seq SET seq = seq + 1 WHERE id = 1")
            self._pending = self._seq + 1

    def _committed(self) -> None:
        if self._pending is not None:
            self._seq, self._pending = self._pending, None
            self._witness()

    def close(self) -> None:
        with self._lock:
            if self._seq_fd >= 0:
                os.fsync(self._seq_fd)
                os.close(self._seq_fd)
                self._seq_fd = -1
            super().close()
            self._release_lock()

    def _release_lock(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # closing the file drops its flock
            self._lock_fd = -1


def _take_lock(path: str) -> int:
    """An exclusive flock on `<path>-lock`, naming this process in it; StoreError naming the
    process that holds it already."""
    lock_path = path + "-lock"
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise StoreError(
            f"another coordinator (process {holder}) is serving from {path}: SQLite takes one "
            "coordinator per file; stop that one first, or give this one a data directory "
            "of its own (--data-dir)"
        ) from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _identity(path: str) -> tuple[int, int] | None:
    """The (device, inode) of the file at `path`; None when there is none."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino
