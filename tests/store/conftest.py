"""Store fixtures: every contract test runs against memory, SQLite and PostgreSQL.

PostgreSQL runs only when SPAREGRID_TEST_POSTGRES holds a DSN, e.g.
postgresql://postgres@127.0.0.1:5432/test; each test gets a fresh schema, dropped after.
"""

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sparegrid.coordinator.store.base import Store
from sparegrid.coordinator.store.memory import MemoryStore
from sparegrid.coordinator.store.sql import SqlStore
from sparegrid.coordinator.store.sqlite import SqliteStore

POSTGRES_ENV = "SPAREGRID_TEST_POSTGRES"
SQL_BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]

Opener = Callable[[], SqlStore]


class Backends:
    """Opens SQL stores for one test and closes (and drops) them all at its end."""

    def __init__(self, tmp_path: Path) -> None:
        self._tmp_path = tmp_path
        self._opened: list[SqlStore] = []
        self._schemas: list[tuple[str, str]] = []

    def opener(self, backend: str) -> Opener:
        """A function opening a fresh database of the backend; each call opens it again."""
        if backend == "sqlite":
            path = self._tmp_path / f"{uuid.uuid4().hex}.db"
            return lambda: self._keep(SqliteStore(path))
        from sparegrid.coordinator.store.postgres import PostgresStore

        dsn = self.postgres_dsn()
        schema = f"sparegrid_test_{uuid.uuid4().hex[:12]}"
        self._schemas.append((dsn, schema))
        return lambda: self._keep(PostgresStore(dsn, schema=schema))

    @staticmethod
    def postgres_dsn() -> str:
        dsn = os.environ.get(POSTGRES_ENV, "")
        if not dsn:
            pytest.skip(f"set {POSTGRES_ENV} to a PostgreSQL DSN to run the PostgreSQL store tests")
        return dsn

    def _keep(self, store: SqlStore) -> SqlStore:
        self._opened.append(store)
        return store

    def close(self) -> None:
        for store in self._opened:
            store.close()
        if self._schemas:
            import psycopg
            from psycopg import sql

            for dsn, schema in self._schemas:
                with psycopg.connect(dsn, autocommit=True) as conn:
                    drop = sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE")
                    conn.execute(drop.format(sql.Identifier(schema)))


@pytest.fixture
def backends(tmp_path: Path) -> Iterator[Backends]:
    b = Backends(tmp_path)
    yield b
    b.close()


@pytest.fixture(params=["memory", *SQL_BACKENDS])
def store(request: pytest.FixtureRequest, backends: Backends) -> Store:
    if request.param == "memory":
        return MemoryStore()
    return backends.opener(request.param)()


@pytest.fixture(params=SQL_BACKENDS)
def open_sql_store(request: pytest.FixtureRequest, backends: Backends) -> Opener:
    """Opens the same SQL database each time it is called."""
    return backends.opener(request.param)
