"""What the SQL store needs from a database: one connection, transactions, migrations.

SQL is written once with "?" placeholders; a dialect names what differs between SQLite
and PostgreSQL (column types, how to begin, row locks, placeholder style, its errors).
"""

import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from sparegrid.coordinator.store.base import Conflict, StoreError, StoreUnavailable
from sparegrid.coordinator.store.schema import MIGRATIONS, SCHEMA_VERSION_TABLE, statements

# Most values bound in one statement; SQLite allows 32766 and PostgreSQL 65535.
CHUNK = 500


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    def execute(self, sql: str, params: Sequence[Any], /) -> object: ...

    def executemany(self, sql: str, params: Iterable[Sequence[Any]], /) -> object: ...

    def fetchall(self) -> list[Any]: ...

    def close(self) -> None: ...


class Connection(Protocol):
    def cursor(self) -> Cursor: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Dialect:
    types: dict[str, str]  # fills {real}, {blob}, {serial} and {now} in schema scripts
    begin: str  # the statement that opens a transaction
    lock_rows: str  # appended to a SELECT to lock the rows it reads
    placeholder: str  # "?" or "%s"
    integrity_error: type[Exception]
    error: type[Exception]  # the base of the driver's errors


class TransactionDoomed(StoreError):
    """A pipelined transaction met a database error: it rolls back as a whole."""


def chunks(items: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), CHUNK):
        yield items[start : start + CHUNK]


def marks(count: int) -> str:
    return ", ".join("?" * count)


class CommitGate:
    """The connection's re-entrant lock, closed while a commit is left to another thread:
    until that thread has committed, any other thread that takes the lock waits."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._open = threading.Event()
        self._open.set()
        self.committer: int | None = None  # the thread let in while closed

    def __enter__(self) -> None:
        while True:
            self._lock.acquire()
            if self._open.is_set() or self.committer == threading.get_ident():
                return
            self._lock.release()
            self._open.wait()

    def __exit__(self, *exc: object) -> None:
        self._lock.release()

    def close(self) -> None:
        self._open.clear()

    def open(self) -> None:
        self._open.set()


class SqlEngine:
    """A connection guarded by a re-entrant lock, with nesting transactions.

    A method called outside `transaction()` runs in a transaction of its own; inside one,
    only the outermost transaction commits or rolls back.

    A backend may pipeline (postgres.py): inside a transaction, statements whose results
    are not needed go out without waiting for them, and a transaction costs about one
    round trip plus one per query. A database error then surfaces at the next query or
    sync, perhaps in another statement than the one that failed: it dooms the whole
    transaction (only `_conflicts` tells its own errors apart, and survives them), and
    the outermost transaction rolls back rather than commit.
    """

    migrations: ClassVar[list[tuple[int, str]]] = MIGRATIONS

    def __init__(self, conn: Connection, dialect: Dialect) -> None:
        self._conn = conn
        self._dialect = dialect
        self._lock = CommitGate()
        self._depth = 0
        self._translated: dict[str, str] = {}
        self._pipelined = False  # statements go out without waiting for their results
        self._unsynced = False  # statements sent whose results are not read yet
        self._doomed: BaseException | None = None  # a database error in this transaction
        self._method_transaction = False  # the transaction is a store method's own
        try:
            self._migrate()
        except BaseException:
            conn.close()
            raise

    database = "database"  # what errors call it (postgres.py names server and database)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def reconnect(self) -> None:
        """Nothing to do where the connection cannot be lost (SQLite: a local file)."""

    def refresh_statistics(self) -> list[str]:
        """Nothing to do where plans do not outlive the statistics they were made from."""
        return []

    def _lost(self, exc: Exception) -> bool:
        """Whether `exc` says the connection was lost (the server or the network dropped
        it, or left it unusable)."""
        return False

    @contextmanager
    def transaction(self, defer_commit: bool = False) -> Iterator[None]:
        with self._lock:
            if self._depth:  # nested: a savepoint, so a failure undoes only this block
                self._depth += 1
                name = f"nested_{self._depth}"
                self._run(f"SAVEPOINT {name}")
                try:
                    yield
                except BaseException as exc:
                    self._undo(name, exc)
                    raise
                else:
                    self._run(f"RELEASE SAVEPOINT {name}")
                finally:
                    self._depth -= 1
                return
            self._doomed = None
            self._depth = 1
            try:
                with self._errors():
                    self._pipeline(True)
                self._run(self._dialect.begin)
                self._began()
                yield
            except BaseException:
                self._abort()
                raise
            if defer_commit:
                self._lock.close()  # until finish_commit, no other thread gets in
                return
            self._commit()

    def finish_commit(self) -> None:
        """Commits the transaction that `transaction(defer_commit=True)` left open, from
        any thread (the group commit's own, so the event loop runs on while the disk
        syncs or the server answers). Until it is done every other thread's statement
        waits, so none joins the transaction or reads around it. A failure rolls the
        transaction back and raises."""
        self._lock.committer = threading.get_ident()
        try:
            with self._lock:
                self._commit()
        finally:
            self._lock.committer = None
            self._lock.open()

    def _commit(self) -> None:
        try:
            if self._doomed is not None:
                raise self._doom_error(self._doomed)
            self._committing()
            self._run("COMMIT")
            with self._errors():
                self._pipeline(False)  # reads every result, the COMMIT's included
        except BaseException:
            self._abort()
            raise
        self._depth = 0
        self._doomed = None
        self._committed()

    def _abort(self) -> None:
        try:
            with suppress(Exception):  # keep the original error, not a failed rollback
                self._pipeline(False, failed=True)
                self._run("ROLLBACK")
        finally:
            self._depth = 0
            self._doomed = None

    def _doom_error(self, doomed: BaseException) -> StoreError:
        if isinstance(doomed, Exception) and self._lost(doomed):
            return StoreUnavailable(f"lost the {self.database}: {doomed}")
        return TransactionDoomed(f"a statement of this transaction failed: {doomed}")

    def _undo(self, savepoint: str, exc: BaseException) -> None:
        """Rolls a failed nested block back to its savepoint; a pipelined transaction that a
        database error doomed is left to the outermost one to roll back."""
        if self._pipelined and isinstance(exc, self._dialect.error):
            self._doomed = self._doomed or exc
        if self._doomed is not None:
            return
        with suppress(Exception):
            self._run(f"ROLLBACK TO SAVEPOINT {savepoint}")
            self._run(f"RELEASE SAVEPOINT {savepoint}")

    @contextmanager
    def _atomic(self) -> Iterator[None]:
        """What a store method runs in: a transaction of its own when called alone.

        Inside a transaction it adds no savepoint (two round trips on PostgreSQL): a
        method raises what callers handle (Conflict, InsufficientFunds) either before it
        writes or from a `_conflicts` block, which has a savepoint of its own; any other
        error is undone with the enclosing block.
        """
        with self._lock:
            if self._depth:
                yield
                return
            with self.transaction():
                self._method_transaction = True
                try:
                    yield
                finally:
                    self._method_transaction = False

    def _deferred(self) -> bool:
        """Whether writes may go unread until the commit: inside a caller's pipelined
        transaction (a group commit), where an error dooms the whole transaction anyway,
        not a store method's own (whose caller hears its outcome at once)."""
        return self._pipelined and not self._method_transaction

    # what a backend may add around the outermost transaction (sqlite.py counts commits;
    # postgres.py pipelines)

    def _began(self) -> None:
        """Just after BEGIN."""

    def _committing(self) -> None:
        """Just before COMMIT, inside the transaction."""

    def _committed(self) -> None:
        """Just after a COMMIT succeeded."""

    def _pipeline(self, on: bool, failed: bool = False) -> None:
        """Enters or leaves pipeline mode; leaving reads every result, raising the first
        error unless the transaction `failed` already. Not pipelined here."""

    def _execute(self, cur: Cursor, sql: str, params: Sequence[Any]) -> None:
        """Executes one statement (a backend may mend a value its database cannot hold)."""
        cur.execute(sql, params)

    def _execute_many(self, cur: Cursor, sql: str, rows: list[Sequence[Any]]) -> None:
        cur.executemany(sql, rows)

    def _read_results(self) -> None:
        """Reads the results of every statement sent, raising the first error."""

    def _sync(self) -> None:
        if not self._unsynced:
            return
        try:
            with self._errors():
                self._read_results()
        finally:
            self._unsynced = False

    @contextmanager
    def _conflicts(self, message: str, lazy: bool = False) -> Iterator[None]:
        """Makes the block all-or-nothing and turns a unique violation into Conflict.

        Inside an enclosing transaction the block runs in a savepoint, so a failure undoes
        only its own writes and leaves the transaction usable: PostgreSQL refuses every
        statement after an error until the transaction rolls back. Pipelined, the block's
        results are read at its end. An error read there may be a statement's sent before
        the block: then the block's SAVEPOINT never ran, rolling back to it fails in turn,
        and that error dooms the transaction. `lazy`, inside a caller's pipelined
        transaction: the results are not read here, and a violation (a bug, as a random id
        cannot collide) dooms the transaction rather than raise Conflict; nor is there a
        savepoint (two statements more for the server), as the block is undone with its
        caller's.
        """
        if self._doomed is not None:
            raise self._doom_error(self._doomed)
        lazy = lazy and self._deferred()
        nested = self._depth > 0 and not lazy  # store methods add no depth (_atomic)
        if nested:
            self._run("SAVEPOINT store_call")
        try:
            yield
            if not lazy:
                self._sync()
        except BaseException as e:
            if isinstance(e, self._dialect.integrity_error):
                self._doomed = None  # this block's own error, undone just below
            if nested and self._doomed is None:
                self._run("ROLLBACK TO SAVEPOINT store_call")
                self._run("RELEASE SAVEPOINT store_call")
            if isinstance(e, self._dialect.integrity_error):
                raise Conflict(message) from e
            raise
        if nested:
            self._run("RELEASE SAVEPOINT store_call")

    def _queries(self, statements: list[tuple[str, Sequence[Any]]]) -> list[list[Any]]:
        """Runs queries and returns their rows; pipelined, all in one round trip."""
        with self._lock, self._errors():
            cursors = [self._conn.cursor() for _ in statements]
            try:
                for cur, (sql, params) in zip(cursors, statements, strict=True):
                    self._execute(cur, self._sql(sql), params)
                rows = [cur.fetchall() for cur in cursors]
            finally:
                for cur in cursors:
                    cur.close()
            self._unsynced = False
            return rows

    def schema_version(self) -> int:
        """The latest migration applied (0 for none)."""
        with self.transaction():
            rows = self._query("SELECT MAX(version) FROM schema_version")
        return int(rows[0][0] or 0)

    def _migrate(self) -> None:
        types = self._dialect.types
        with self.transaction():
            self._run(SCHEMA_VERSION_TABLE.format(**types))
        for version, script in self.migrations:
            with self.transaction():
                if version <= self.schema_version():
                    continue
                for statement in statements(script, types):
                    self._run(statement)
                self._run(
                    "INSERT INTO schema_version (version, applied_at) VALUES (?, ?)",
                    (version, time.time()),
                )

    # statements

    def _sql(self, sql: str) -> str:
        translated = self._translated.get(sql)
        if translated is None:
            translated = sql
            if self._dialect.placeholder != "?":
                translated = sql.replace("%", "%%").replace("?", self._dialect.placeholder)
            self._translated[sql] = translated
        return translated

    def _run(self, sql: str, params: Sequence[Any] = ()) -> None:
        """Executes one statement; pipelined, without waiting for its result."""
        with self._lock, self._errors():
            cur = self._conn.cursor()
            try:
                self._execute(cur, self._sql(sql), params)
            finally:
                cur.close()
            self._unsynced = self._pipelined

    def _count(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Executes one statement; returns how many rows it changed."""
        with self._lock, self._errors():
            cur = self._conn.cursor()
            try:
                self._execute(cur, self._sql(sql), params)
                self._unsynced = self._pipelined
                self._sync()
                return cur.rowcount
            finally:
                cur.close()

    def _run_many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """Executes a statement once per row: nothing for none, as one for one."""
        listed = rows if isinstance(rows, list) else list(rows)
        if len(listed) == 1:
            self._run(sql, listed[0])
            return
        if not listed:
            return
        with self._lock, self._errors():
            cur = self._conn.cursor()
            try:
                self._execute_many(cur, self._sql(sql), listed)
            finally:
                cur.close()
            self._unsynced = self._pipelined

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        with self._lock, self._errors():
            cur = self._conn.cursor()
            try:
                self._execute(cur, self._sql(sql), params)
                rows = cur.fetchall()  # pipelined: reads every result sent before too
            finally:
                cur.close()
            self._unsynced = False
            return rows

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """Pipelined, a database error may be any earlier statement's: it dooms the
        transaction."""
        try:
            yield
        except Exception as exc:
            if self._pipelined and isinstance(exc, self._dialect.error):
                self._doomed = self._doomed or exc
            if isinstance(exc, self._dialect.error) and self._lost(exc):
                raise StoreUnavailable(f"lost the {self.database}: {exc}") from exc
            raise

    def _query_in(self, sql: str, values: Sequence[str], params: Sequence[Any] = ()) -> list[Any]:
        """Runs sql, whose "(*)" stands for the values, in chunks; params come first."""
        rows: list[Any] = []
        for chunk in chunks(values):
            rows += self._query(sql.replace("(*)", f"({marks(len(chunk))})"), (*params, *chunk))
        return rows
