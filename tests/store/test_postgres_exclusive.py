"""One coordinator at a time serves from a PostgreSQL database: a serving coordinator's
store holds an advisory lock on its connection. Another is told the database is taken
(and stands by); a coordinator whose connection was cut cannot reconnect and write once
another took over; other schemas, and the tools that open a store without serving, are
not held up."""

import uuid
from collections.abc import Iterator

import pytest

from sparegrid.coordinator.store import open_store
from sparegrid.coordinator.store.base import StoreTaken, StoreUnavailable
from tests.store.conftest import Backends

pytestmark = pytest.mark.postgres


@pytest.fixture
def dsn() -> str:
    return Backends.postgres_dsn()


@pytest.fixture
def schema(dsn: str) -> Iterator[str]:
    name = f"sparegrid_test_{uuid.uuid4().hex[:12]}"
    yield name
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')  # type: ignore[arg-type]


def test_a_second_serving_store_is_refused_until_the_first_closes(dsn: str, schema: str) -> None:
    from sparegrid.coordinator.store.postgres import PostgresStore

    first = PostgresStore(dsn, schema=schema, exclusive=True)
    with pytest.raises(
        StoreTaken, match=f"another coordinator is serving from the schema {schema}"
    ):
        PostgresStore(dsn, schema=schema, exclusive=True)
    tool = PostgresStore(dsn, schema=schema)  # backup, migrate --check: not serving
    tool.close()
    other = PostgresStore(dsn, schema=f"{schema}_other", exclusive=True)  # not the same one
    other.close()
    first.close()
    second = PostgresStore(dsn, schema=schema, exclusive=True)
    second.close()
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}_other" CASCADE')  # type: ignore[arg-type]


def test_a_cut_off_coordinator_cannot_come_back_once_another_took_over(
    dsn: str, schema: str
) -> None:
    import psycopg

    from sparegrid.coordinator.store.postgres import PostgresStore

    first = PostgresStore(dsn, schema=schema, exclusive=True)
    pid = first._pg.info.backend_pid
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
    with pytest.raises(StoreUnavailable):
        first.get_account_by_name("admin")  # its connection, and so its lock, are gone
    second = PostgresStore(dsn, schema=schema, exclusive=True)  # the standby takes over
    with pytest.raises(StoreTaken):
        first.reconnect()  # the first may not write beside it
    second.close()
    first.reconnect()  # once nobody serves, it may again
    assert first.get_account_by_name("nobody") is None
    first.close()


def test_open_store_holds_the_database_only_when_asked(dsn: str) -> None:
    serving = open_store(dsn, exclusive=True)
    try:
        with pytest.raises(StoreTaken):
            open_store(dsn, exclusive=True)
        open_store(dsn).close()
    finally:
        serving.close()
