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

from sparegrid.coordinator.store.base import Conflict
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
    types: dict[str, str]  # fills {real}, {blob} and {serial} in schema scripts
    begin: str  # the statement that opens a transaction
    lock_rows: str  # appended to a SELECT to lock the rows it reads
    placeholder: str  # "?" or "%s"
    integrity_error: type[Exception]


def chunks(items: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), CHUNK):
        yield items[start : start + CHUNK]


def marks(count: int) -> str:
    return ", ".join("?" * count)


class SqlEngine:
    """A connection guarded by a re-entrant lock, with nesting transactions.

    A method called outside `transaction()` runs in a transaction of its own; inside one,
    only the outermost transaction commits or rolls back.
    """

    migrations: ClassVar[list[tuple[int, str]]] = MIGRATIONS

    def __init__(self, conn: Connection, dialect: Dialect) -> None:
        self._conn = conn
        self._dialect = dialect
        self._lock = threading.RLock()
        self._depth = 0
        self._translated: dict[str, str] = {}
        try:
            self._migrate()
        except BaseException:
            conn.close()
            raise

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with self._lock:
            if self._depth:  # nested: a savepoint, so a failure undoes only this block
                self._depth += 1
                name = f"nested_{self._depth}"
                self._run(f"SAVEPOINT {name}")
                try:
                    yield
                except BaseException:
                    with suppress(Exception):
                        self._run(f"ROLLBACK TO SAVEPOINT {name}")
                        self._run(f"RELEASE SAVEPOINT {name}")
                    raise
                else:
                    self._run(f"RELEASE SAVEPOINT {name}")
                finally:
                    self._depth -= 1
                return
            self._run(self._dialect.begin)
            self._depth = 1
            self._began()
            try:
                yield
                self._committing()
                self._run("COMMIT")
            except BaseException:
                with suppress(Exception):  # keep the original error, not a failed rollback
                    self._run("ROLLBACK")
                raise
            finally:
                self._depth = 0
            self._committed()

    # what a backend may add around the outermost transaction (sqlite.py counts commits)

    def _began(self) -> None:
        """Just after BEGIN."""

    def _committing(self) -> None:
        """Just before COMMIT, inside the transaction."""

    def _committed(self) -> None:
        """Just after a COMMIT succeeded."""

    @contextmanager
    def _conflicts(self, message: str) -> Iterator[None]:
        """Makes the block all-or-nothing and turns a unique violation into Conflict.

        Inside an enclosing transaction the block runs in a savepoint, so a failure undoes
        only its own writes and leaves the transaction usable: PostgreSQL refuses every
        statement after an error until the transaction rolls back.
        """
        nested = self._depth > 1
        if nested:
            self._run("SAVEPOINT store_call")
        try:
            yield
        except BaseException as e:
            if nested:
                self._run("ROLLBACK TO SAVEPOINT store_call")
                self._run("RELEASE SAVEPOINT store_call")
            if isinstance(e, self._dialect.integrity_error):
                raise Conflict(message) from e
            raise
        if nested:
            self._run("RELEASE SAVEPOINT store_call")

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

    def _run(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Executes one statement; returns how many rows it changed."""
        with self._lock:
            cur = self._conn.cursor()
            try:
                cur.execute(self._sql(sql), params)
                return cur.rowcount
            finally:
                cur.close()

    def _run_many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        with self._lock:
            cur = self._conn.cursor()
            try:
                cur.executemany(self._sql(sql), rows)
            finally:
                cur.close()

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        with self._lock:
            cur = self._conn.cursor()
            try:
                cur.execute(self._sql(sql), params)
                return cur.fetchall()
            finally:
                cur.close()

    def _query_in(self, sql: str, values: Sequence[str], params: Sequence[Any] = ()) -> list[Any]:
        """Runs sql, whose "(*)" stands for the values, in chunks; params come first."""
        rows: list[Any] = []
        for chunk in chunks(values):
            rows += self._query(sql.replace("(*)", f"({marks(len(chunk))})"), (*params, *chunk))
        return rows
