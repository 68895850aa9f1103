"""The SQL store on PostgreSQL through psycopg 3, imported only when a store is opened."""

import logging
import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, suppress
from typing import TYPE_CHECKING, Any, cast

from sparegrid.coordinator.domain import Task, TaskState
from sparegrid.coordinator.store import rows as r
from sparegrid.coordinator.store.base import StoreError, StoreTaken, StoreUnavailable
from sparegrid.coordinator.store.engine import Connection, Dialect, chunks, marks
from sparegrid.coordinator.store.sql import SqlStore


def _not_a_dead_pipeline(record: logging.LogRecord) -> bool:
    """psycopg warns when it cannot end a pipeline on a connection already lost ("error
    ignored terminating <psycopg.Pipeline [BAD]>: the connection is lost"): the store
    names the loss itself (`lost the PostgreSQL database ...`), and the coordinator logs
    it once; the warning only left operators wondering what else had gone wrong."""
    return not record.getMessage().startswith("error ignored terminating <psycopg.Pipeline")


logging.getLogger("psycopg").addFilter(_not_a_dead_pipeline)

if TYPE_CHECKING:
    import psycopg

APPLICATION_NAME = "sparegrid-coordinator"
# The advisory lock a serving coordinator holds on its connection, one per schema: two
# coordinators never serve from one database at once (their queues live in memory).
_HOLD = "SELECT pg_try_advisory_lock(hashtext('sparegrid-coordinator:' || current_schema()))"
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
# Statements of one row that _run_many sends many rows at a time:
# an INSERT (what comes before its VALUES group, the group, and what follows it)
_INSERT = re.compile(r"(INSERT INTO .+? VALUES )(\([?, ]+\))(.*)", re.DOTALL)
# an UPDATE of one row by its key (the table, what it sets, the key column)
_UPDATE = re.compile(r"UPDATE (\w+) SET ((?:\w+ = \?, )*\w+ = \?) WHERE (\w+) = \?")
MOST_ROWS = 256  # rows one such statement writes at most
# A dispatch pass's lease inside a group commit, sent without waiting for its result
# (_lease_queued): a task not queued fails it, and the whole transaction with it. An IN
# list, as in the lease that reads its result: `id = ANY(array)` cost the server 0.13 ms
# more per task leased (0.34 against 0.21 ms of its CPU per result, bench/engines.py).
_LEASE_ALL = (
    "WITH leased AS (UPDATE tasks SET state = ?, attempts = attempts + 1"
    " WHERE state = ? AND id IN ({}) RETURNING id)"
    " SELECT CASE WHEN COUNT(*) = ? THEN 0 ELSE ('sparegrid: a dispatch pass leased '"
    " || (? - COUNT(*)) || ' task(s) that are not queued in the store')::int END FROM leased"
)
# Tables whose rows changed by more than 50 + 10% since their statistics were gathered
# (autovacuum's own threshold for an ANALYZE, on its defaults).
_STALE = (
    "SELECT relname FROM pg_stat_user_tables WHERE schemaname = current_schema()"
    " AND n_mod_since_analyze > 50 + 0.1 * n_live_tup"
)


class PostgresStore(SqlStore):
    """A store in a PostgreSQL database, over one connection.

    schema, when given, is created if missing and becomes the search path, so tables
    live there (the contract tests use a throwaway schema per test). The connection
    names itself `sparegrid-coordinator` (application_name) unless the DSN names it.
    A connection the server or the network dropped makes every call raise
    StoreUnavailable, naming the database, until `reconnect()` succeeds.

    exclusive (a serving coordinator): the connection holds an advisory lock on the
    database (its schema) for as long as it lives, and every connection, the first and
    each reconnection, takes it before anything is read or written; StoreTaken when
    another coordinator holds it. All writes go through the connection that holds the
    lock, so a coordinator cut off from the database cannot write beside the one that
    took over: its lock ended with its connection.
    """

    def __init__(self, dsn: str, schema: str | None = None, exclusive: bool = False) -> None:
        try:
            import psycopg
        except ImportError as e:
            raise ImportError(
                "PostgresStore needs psycopg: pip install 'sparegrid[postgres]'"
            ) from e
        if schema is not None and not _IDENTIFIER.fullmatch(schema):
            raise ValueError(f"schema must be a plain SQL identifier, not {schema!r}")
        self._dsn, self._schema, self._exclusive = dsn, schema, exclusive
        info = psycopg.conninfo.conninfo_to_dict(dsn)
        self.database = (
            f"PostgreSQL database {info.get('dbname') or info.get('user') or '?'} on "
            f"{info.get('host') or 'localhost'}:{info.get('port') or 5432}"
        )
        try:
            conn = self._connect()
        except psycopg.OperationalError as exc:
            raise StoreUnavailable(f"cannot reach the {self.database}: {exc}") from exc
        try:
            self._check_encoding(conn)
            self._hold(conn)
        except BaseException:
            conn.close()
            raise
        dialect = Dialect(
            types={
                "real": "DOUBLE PRECISION",
                "blob": "BYTEA",
                "serial": "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
                "now": "EXTRACT(EPOCH FROM now())",
            },
            begin="BEGIN",
            lock_rows=" FOR UPDATE",
            placeholder="%s",
            integrity_error=psycopg.IntegrityError,
            error=psycopg.Error,
        )
        self._pg = conn
        self._pipe: AbstractContextManager[object] | None = None
        self._numbered: dict[tuple[str, int], str] = {}  # (statement, rows) -> its SQL
        self._types: dict[str, dict[str, str]] = {}  # table -> column -> its SQL type
        self._raw_cursor = psycopg.RawCursor
        self._broken = False  # the connection was lost: reconnect() opens another
        # psycopg's stubs want LiteralString queries; ours are assembled from constants.
        super().__init__(cast(Connection, conn), dialect)

    def _connect(self, name: str = APPLICATION_NAME) -> "psycopg.Connection[tuple[Any, ...]]":
        import psycopg

        dsn = self._dsn
        if "application_name" not in psycopg.conninfo.conninfo_to_dict(dsn):
            dsn = psycopg.conninfo.make_conninfo(dsn, application_name=name)
        # autocommit: the store sends BEGIN, COMMIT and ROLLBACK itself.
        conn = psycopg.connect(dsn, autocommit=True, connect_timeout=10)
        try:
            if self._schema is not None:
                schema = psycopg.sql.Identifier(self._schema)
                conn.execute(psycopg.sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(schema))
                conn.execute(psycopg.sql.SQL("SET search_path TO {}").format(schema))
        except BaseException:
            conn.close()
            raise
        return conn

    def _check_encoding(self, conn: "psycopg.Connection[tuple[Any, ...]]") -> None:
        """Refuses a database not in UTF-8, before anything is read or written: it refuses
        text it cannot encode (a node named "✓" could never connect, meeting INTERNAL),
        and inside a group commit that failed every call of the group."""
        row = conn.execute("SELECT current_database(), current_setting('server_encoding')")
        # a SQL_ASCII database answers text as bytes: shown as they are, not as b'...'
        name, encoding = (
            v.decode("ascii", "replace") if isinstance(v, bytes) else str(v)
            for v in row.fetchone() or ("?", "?")
        )
        if encoding != "UTF8":
            raise StoreError(
                f"the {self.database} is encoded in {encoding}, not UTF8: it cannot hold "
                "every name and message that workers and clients send. Serve from a database "
                f"in UTF-8, made with CREATE DATABASE {name}_utf8 ENCODING 'UTF8' "
                "TEMPLATE template0 (adding LOCALE 'C.UTF-8' where the server's default "
                "locale is not UTF-8)"
            )

    def _hold(self, conn: "psycopg.Connection[tuple[Any, ...]]") -> None:
        """Takes the coordinators' lock on this connection (exclusive stores only)."""
        if not self._exclusive:
            return
        row = conn.execute(_HOLD).fetchone()
        if not (row and row[0]):
            where = f"schema {self._schema} of the " if self._schema else ""
            raise StoreTaken(f"another coordinator is serving from the {where}{self.database}")

    def _lost(self, exc: Exception) -> bool:
        import psycopg

        # an OperationalError of the connection: the server's word that it is gone (SQLSTATE
        # class 08, or 57 but 57014: shut down, terminated) or none at all (the socket
        # failed). Not one of a statement, though psycopg files it there too: over a server
        # limit (an index row over 8 KiB, 54000), cancelled (57014). Those fail their
        # transaction only; taken for a lost connection they made the coordinator
        # reconnect and stop. Nor is PipelineAborted (no SQLSTATE either): a statement sent
        # after an earlier one's error, whose transaction that error dooms.
        if isinstance(exc, psycopg.errors.PipelineAborted):
            return self._broken or self._pg.broken or self._pg.closed
        state = getattr(exc, "sqlstate", None) or ""
        gone = state[:2] in ("", "08", "57") and state != "57014"
        self._broken = self._broken or (isinstance(exc, psycopg.OperationalError) and gone)
        return self._broken or self._pg.broken or self._pg.closed

    def refresh_statistics(self) -> list[str]:
        """ANALYZEs the tables that changed much since their statistics were gathered, on a
        connection of its own (it may run in another thread); returns their names.

        PostgreSQL plans a prepared statement once for all its runs (a generic plan) from
        the tables' statistics, and keeps that plan until they change. Made while the
        tables were new and empty, the plan that finds a payment's idempotency keys read
        the whole ledger (a sequential scan), ever slower as it grew, and with autovacuum
        off no ANALYZE came to replace it. Where autovacuum runs, it finds nothing to do."""
        import psycopg

        with self._connect(f"{APPLICATION_NAME} statistics") as conn:
            stale = [row[0] for row in conn.execute(_STALE).fetchall()]
            for table in stale:
                conn.execute(psycopg.sql.SQL("ANALYZE {}").format(psycopg.sql.Identifier(table)))
        return stale

    def reconnect(self) -> None:
        """Opens a new connection if the one held was lost; raises StoreUnavailable while
        the database cannot be reached."""
        with self._lock:
            if not (self._broken or self._pg.broken or self._pg.closed):
                return
            with suppress(Exception):  # its advisory lock goes with it, for the new one to take
                self._pg.close()
            try:
                conn = self._connect()
            except self._dialect.error as exc:
                raise StoreUnavailable(f"cannot reach the {self.database}: {exc}") from exc
            try:
                self._hold(conn)
            except BaseException:
                conn.close()
                raise
            old, self._pg, self._conn = self._pg, conn, cast(Connection, conn)
            self._pipe, self._pipelined, self._unsynced = None, False, False
            self._depth, self._doomed, self._broken = 0, None, False
            with suppress(Exception):
                old.close()

    def _pipeline(self, on: bool, failed: bool = False) -> None:
        """A transaction runs in psycopg's pipeline mode: what it writes goes out without
        waiting, and leaving the mode reads every result (a Sync inside BEGIN ... COMMIT
        commits nothing)."""
        if on:
            if self._pipe is None:
                entered = self._pg.pipeline()
                entered.__enter__()
                self._pipe, self._pipelined = entered, True
            return
        pipe, self._pipe = self._pipe, None
        self._pipelined = self._unsynced = False
        if pipe is None:
            return
        if failed:  # results are dropped: the transaction rolls back anyway
            pipe.__exit__(StoreError, StoreError("rolled back"), None)
        else:
            pipe.__exit__(None, None, None)

    def _lease_queued(self, task_ids: list[str]) -> set[str]:
        """Inside a group commit (pipelined, a caller's transaction) the tasks a dispatch
        pass leases are those it holds as queued in memory, which mirrors the store (one
        coordinator writes it): the lease goes out without waiting for its result, instead
        of costing every pass a round trip to learn which tasks it won. A task the store
        holds as not queued fails the statement, so memory and store never part: the
        group commit fails and memory is reloaded (App._failed_commit)."""
        if not self._deferred():
            return super()._lease_queued(task_ids)
        leased, queued = TaskState.LEASED.value, TaskState.QUEUED.value
        for chunk in chunks(task_ids):
            count = len(chunk)
            self._run(_LEASE_ALL.format(marks(count)), (leased, queued, *chunk, count, count))
        return set(task_ids)

    def _execute(self, cur: Any, sql: str, params: Sequence[Any]) -> None:
        """PostgreSQL's text cannot hold NUL, which workers and clients may send in any
        string (a name, an error message): psycopg refuses such a value before sending
        anything, and the statement is sent again with each NUL as U+FFFD. A refusal left
        to reach the transaction would fail every call of its group commit."""
        try:
            cur.execute(sql, params)
        except Exception as exc:
            if not _holds_nul(exc):
                raise
            cur.execute(sql, _mended(params))

    def _execute_many(self, cur: Any, sql: str, rows: list[Sequence[Any]]) -> None:
        # pipelined, rows go out one by one: a refusal could come after some were sent
        cur.executemany(sql, [_mended(row) for row in rows])

    def _read_results(self) -> None:
        pipeline = self._pg._pipeline
        if pipeline is not None:
            pipeline.sync()

    def _run_many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """Many rows go as a few statements of many rows each (row_slices), not one per
        row: on PostgreSQL a statement costs the server and the driver far more than a row
        does. An INSERT takes them as one VALUES list; an UPDATE of one row by its key
        joins them as one (the last row for a key wins, as one statement per row would)."""
        listed = rows if isinstance(rows, list) else list(rows)
        if len(listed) > 1:
            insert = _INSERT.fullmatch(sql)
            if insert is not None and "DO UPDATE" not in insert[3]:  # a row changed twice
                for part in row_slices(listed):
                    self._run_numbered(self._insert_sql(insert, len(part)), part)
                return
            update = _UPDATE.fullmatch(sql)
            if update is not None:
                latest = list({row[-1]: row for row in listed}.values())
                for part in row_slices(latest):
                    self._run_numbered(self._update_sql(update, len(part)), part)
                return
        super()._run_many(sql, listed)

    def _insert_sql(self, insert: re.Match[str], count: int) -> str:
        key = (insert[0], count)
        sql = self._numbered.get(key)
        if sql is None:
            head, group, tail = insert.groups()
            types = [""] * group.count("?")
            sql = self._numbered[key] = head + _numbered_rows(types, count) + tail
        return sql

    def _update_sql(self, update: re.Match[str], count: int) -> str:
        """UPDATE t SET a = v.a, ... FROM (VALUES ...) AS v(a, ..., key) WHERE t.key = v.key,
        each value cast to its column's type: a VALUES list types its columns from its
        values alone, and a column of NULLs would be text."""
        key = (update[0], count)
        sql = self._numbered.get(key)
        if sql is None:
            table, sets, column = update.groups()
            names = [*(part.split(" = ")[0] for part in sets.split(", ")), column]
            types = self._column_types(table)
            sql = self._numbered[key] = (
                f"UPDATE {table} SET {', '.join(f'{n} = v.{n}' for n in names[:-1])} FROM"
                f" (VALUES {_numbered_rows([types[n] for n in names], count)})"
                f" AS v({', '.join(names)}) WHERE {table}.{column} = v.{column}"
            )
        return sql

    def _column_types(self, table: str) -> dict[str, str]:
        """Read once per table (a round trip inside a transaction), not once per slice size."""
        types = self._types.get(table)
        if types is None:
            rows = self._query(
                "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute"
                " WHERE attrelid = ?::regclass AND attnum > 0 AND NOT attisdropped",
                (table,),
            )
            types = self._types[table] = {name: kind for name, kind in rows}
        return types

    def _run_numbered(self, sql: str, rows: list[Sequence[Any]]) -> None:
        """Runs a statement with numbered placeholders ($1, $2...) through a raw cursor:
        psycopg parses %s placeholders each time a statement of over 50 of them runs (its
        cache stops there), milliseconds for a few hundred rows."""
        with self._lock, self._errors():
            with self._raw_cursor(self._pg) as cur:
                self._execute(cur, sql, [v for row in rows for v in row])
            self._unsynced = self._pipelined

    def _insert_tasks(self, tasks: list[Task]) -> None:
        """COPY: a large job's tasks go in several times faster than by INSERTs. COPY
        cannot run pipelined: the pipeline is left (every result read) and entered again.
        A new task's row holds no text a caller wrote as such (its params are bytes, its
        file lists JSON, which writes NUL as an escape): none needs mending (_execute)."""
        if not tasks:
            return
        sql = f"COPY tasks ({r.TASK_COLUMNS}) FROM STDIN"
        with self._lock:
            resume = self._pipelined
            if resume:
                try:
                    self._pipeline(False)
                except self._dialect.error as exc:
                    self._doomed = self._doomed or exc
                    raise
            try:
                with self._pg.cursor() as cur, cur.copy(sql) as copy:
                    for task in tasks:
                        copy.write_row(r.task_params(task))
            finally:
                if resume:
                    self._pipeline(True)


def _holds_nul(exc: Exception) -> bool:
    """Whether psycopg refused a text value holding NUL (before sending it: no SQLSTATE)."""
    import psycopg

    return isinstance(exc, psycopg.DataError) and exc.sqlstate is None and "NUL" in str(exc)


def _mended(params: Sequence[Any]) -> list[Any]:
    return [v.replace("\x00", "\ufffd") if isinstance(v, str) else v for v in params]


def row_slices(rows: list[Sequence[Any]]) -> Iterator[list[Sequence[Any]]]:
    """Slices of rows whose lengths are powers of two, MOST_ROWS at most: few distinct
    statements, so each is prepared once and kept (psycopg prepares a statement on its
    fifth run)."""
    start = 0
    while start < len(rows):
        size = min(MOST_ROWS, 1 << (len(rows) - start).bit_length() - 1)
        yield rows[start : start + size]
        start += size


def _numbered_rows(types: list[str], count: int) -> str:
    """`count` VALUES groups of numbered placeholders, each cast to its type ("": none)."""
    casts = [f"::{t}" if t else "" for t in types]
    width = len(types)
    return ", ".join(
        "(" + ", ".join(f"${row * width + i + 1}{cast}" for i, cast in enumerate(casts)) + ")"
        for row in range(count)
    )


def peek_meta(dsn: str, name: str) -> str:
    """A value of the meta table, read on a connection of its own that takes no lock and
    migrates nothing: "" when there is none, or no such table yet (a database its serving
    coordinator has not upgraded). StoreUnavailable when the database cannot be reached."""
    import psycopg

    try:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
            row = conn.execute("SELECT value FROM meta WHERE name = %s", (name,)).fetchone()
    except psycopg.errors.UndefinedTable:
        return ""
    except psycopg.OperationalError as exc:
        raise StoreUnavailable(f"cannot reach the database: {exc}") from exc
    return str(row[0]) if row else ""
