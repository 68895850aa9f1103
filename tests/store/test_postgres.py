"""PostgreSQL only: a pipelined transaction never commits part of itself, a lost
connection raises StoreUnavailable naming the database until `reconnect()`, and many rows
go as a few statements."""

import contextlib
import secrets
import time
from collections.abc import Sequence
from typing import Any

import pytest

from sparegrid.coordinator.domain import MINT, AttemptState, TaskState
from sparegrid.coordinator.store.base import StoreError, StoreUnavailable
from sparegrid.coordinator.store.engine import TransactionDoomed
from sparegrid.coordinator.store.postgres import APPLICATION_NAME, PostgresStore
from tests.store.builders import ALICE, BOB, attempt, grant, leased_job
from tests.store.conftest import Backends

pytestmark = pytest.mark.postgres


@pytest.fixture
def pg(backends: Backends) -> PostgresStore:
    store = backends.opener("postgres")()
    assert isinstance(store, PostgresStore)
    return store


def backend_pid(store: PostgresStore) -> int:
    with store.transaction():
        ((pid,),) = store._query("SELECT pg_backend_pid()")
    return int(pid)


def test_the_connection_names_itself(pg: PostgresStore) -> None:
    with pg.transaction():
        ((name,),) = pg._query("SHOW application_name")
    assert name == APPLICATION_NAME


@pytest.mark.parametrize("answered", [False, True])
def test_an_error_read_in_another_call_dooms_the_whole_transaction(
    pg: PostgresStore, answered: bool
) -> None:
    import psycopg

    with pytest.raises(TransactionDoomed, match="no_such_table"), pg.transaction():
        pg.post(grant("g1", ALICE, 10))
        # sent, not read: whether its error comes back in this block (at the RELEASE of its
        # savepoint) or at a later read depends on when the server's answer arrives;
        # either way the whole transaction is doomed. The block's own error is caught, as
        # a group commit catches each call's.
        with contextlib.suppress(psycopg.Error), pg.transaction():
            pg._run("INSERT INTO no_such_table VALUES (1)")
            if answered:  # the error is back before the savepoint's RELEASE is sent
                time.sleep(0.3)
        with pytest.raises((psycopg.Error, TransactionDoomed)):
            pg.post(grant("g2", BOB, 5))  # reads, or knows: the earlier statement failed
    assert pg.balances() == {}
    assert pg.post(grant("g1", ALICE, 10))  # the connection is usable again
    assert pg.balances() == {MINT: -10, ALICE: 10}


def test_a_statement_over_a_server_limit_fails_its_transaction_not_the_connection(
    pg: PostgresStore,
) -> None:
    """psycopg files some errors of a statement (an index row over 8 KiB: 54000) under
    OperationalError, as it does a dropped connection. Taken for one, they made the
    coordinator reconnect while its own connection still held the serving lock, and stop."""
    pid = backend_pid(pg)
    import psycopg

    key = secrets.token_urlsafe(12_000)  # random: an index compresses a row first
    with pytest.raises(psycopg.errors.ProgramLimitExceeded):  # not StoreUnavailable
        pg.post(grant(key, ALICE, 1))
    pg.reconnect()  # nothing to do: the connection was not lost
    assert backend_pid(pg) == pid
    assert pg.post(grant("g1", ALICE, 10))
    assert pg.balances() == {MINT: -10, ALICE: 10}


def test_a_killed_connection_names_the_database_until_it_reconnects(
    pg: PostgresStore, backends: Backends, caplog: pytest.LogCaptureFixture
) -> None:
    import psycopg

    pg.post(grant("g1", ALICE, 10))
    pid = backend_pid(pg)
    with psycopg.connect(backends.postgres_dsn(), autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    with pytest.raises(StoreUnavailable, match=r"lost the PostgreSQL database \w+ on "):
        pg.balance(ALICE)
    with pytest.raises(StoreUnavailable):
        pg.post(grant("g2", BOB, 5))
    # the coordinator says it lost the database; psycopg's own line about the pipeline it
    # could not end on the dead connection ("error ignored terminating ...") only puzzled
    assert "error ignored terminating" not in caplog.text
    pg.reconnect()
    assert backend_pid(pg) != pid
    assert pg.balances() == {MINT: -10, ALICE: 10}  # what was committed, nothing more
    assert pg.post(grant("g2", BOB, 5))


def test_reconnect_says_which_database_cannot_be_reached(pg: PostgresStore) -> None:
    pg._pg.close()
    pg._dsn = "postgresql://postgres@127.0.0.1:1/nowhere"  # nothing listens on port 1
    with pytest.raises(StoreUnavailable, match="cannot reach the PostgreSQL database"):
        pg.reconnect()


def test_a_database_that_cannot_be_reached_at_start_is_named() -> None:
    from sparegrid.coordinator.store import open_store

    with pytest.raises(StoreUnavailable, match="cannot reach the PostgreSQL database nowhere on"):
        open_store("postgresql://postgres@127.0.0.1:1/nowhere")


def test_many_rows_go_as_a_few_statements(
    pg: PostgresStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A settle of a large batch writes each table with a statement per power of two of
    rows (300 = 256 + 32 + 8 + 4), not one per row: a statement costs the server and the
    driver far more than a row does."""
    tasks = leased_job(pg, tasks=300)
    sent: list[int] = []
    real = pg._run_numbered

    def counting(sql: str, rows: list[Sequence[Any]]) -> None:
        sent.append(len(rows))
        real(sql, rows)

    monkeypatch.setattr(pg, "_run_numbered", counting)
    leased = pg.lease_tasks([attempt(f"a{i}", t) for i, t in enumerate(tasks)])
    for a in leased:
        a.state, a.finished_at = AttemptState.SUCCEEDED, None  # a column of NULLs
    pg.update_attempts(leased)
    assert sent == [256, 32, 8, 4] * 2
    assert {a.state for a in pg.get_attempts([a.id for a in leased])} == {AttemptState.SUCCEEDED}


def test_a_lease_in_a_transaction_waits_for_no_reply_and_a_task_not_queued_dooms_it(
    pg: PostgresStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a group commit the tasks a dispatch pass leases are those memory holds as
    queued: the lease reads nothing back (no round trip), and a task the store holds as
    not queued fails the transaction, naming what happened, rather than leasing it."""
    tasks = leased_job(pg, tasks=3)
    pg.lease_tasks([attempt("a1", tasks[0])])
    reads: list[str] = []
    real = pg._query

    def reading(sql: str, params: Sequence[Any] = ()) -> list[Any]:
        reads.append(sql)
        return real(sql, params)

    monkeypatch.setattr(pg, "_query", reading)
    with pg.transaction():
        won = pg.lease_tasks([attempt("a2", tasks[1])])
    assert [a.id for a in won] == ["a2"] and reads == []
    monkeypatch.undo()
    import psycopg

    with pytest.raises(psycopg.Error, match="not queued in the store"), pg.transaction():
        pg.lease_tasks([attempt("a3", tasks[2]), attempt("a4", tasks[0])])
    assert [(t.state, t.attempts) for t in pg.list_tasks(tasks[0].job_id)] == [
        (TaskState.LEASED, 1),
        (TaskState.LEASED, 1),
        (TaskState.QUEUED, 0),  # nothing of the failed lease was written
    ]
    assert pg.get_attempts(["a3", "a4"]) == []
    # outside a transaction of its own caller, a lease still says which tasks it won
    assert [a.id for a in pg.lease_tasks([attempt("a5", tasks[2]), attempt("a6", tasks[0])])] == [
        "a5"
    ]


def test_a_ledger_grown_from_empty_is_read_by_its_index_once_statistics_are_refreshed(
    pg: PostgresStore,
) -> None:
    """Postings of four transactions each, many times while the ledger is nearly empty (so
    PostgreSQL makes a plan of their key lookup costed for an empty table, and keeps it),
    then thousands more: once the coordinator's statistics round has run, finding four keys
    no longer reads the whole ledger. Before, it did for as long as the coordinator ran
    (autovacuum off: no ANALYZE ever came), slower as the ledger grew."""
    for n in range(20):
        assert pg.post_many([grant(f"early-{n}-{k}", ALICE, 1) for k in range(4)]).new == [True] * 4
    for start in range(0, 4000, 400):
        pg.post_many([grant(f"bulk-{n}", ALICE, 1) for n in range(start, start + 400)])
    with pg.transaction():  # the counts of changed rows reach the server's statistics now
        pg._query("SELECT pg_stat_force_next_flush()")
    assert "transactions" in pg.refresh_statistics()
    scans = (
        "SELECT seq_scan FROM pg_stat_xact_user_tables"
        " WHERE schemaname = current_schema() AND relname = 'transactions'"
    )
    with pg.transaction():
        ((before,),) = pg._query(scans)
        assert pg.post_many([grant(f"late-{k}", BOB, 1) for k in range(4)]).new == [True] * 4
        ((after,),) = pg._query(scans)
    assert after == before
    assert "transactions" not in pg.refresh_statistics()  # nothing changed much since


@pytest.mark.parametrize("encoding", ["LATIN1", "SQL_ASCII"])
def test_a_database_not_in_utf8_is_refused_before_anything_is_written(
    backends: Backends, encoding: str
) -> None:
    """A LATIN1 database refused text it cannot encode: a node named "✓" never connected
    (INTERNAL), and inside a group commit every call of the group failed with it. A
    SQL_ASCII one answers in bytes, which the message once showed as b'SQL_ASCII'."""
    import psycopg
    from psycopg import sql

    dsn = backends.postgres_dsn()
    name = f"sparegrid_{encoding.lower()}_{secrets.token_hex(6)}"
    database = sql.Identifier(name)
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(
            sql.SQL(
                "CREATE DATABASE {} ENCODING {} LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0"
            ).format(database, sql.Literal(encoding))
        )
    try:
        latin1 = psycopg.conninfo.make_conninfo(dsn, dbname=name)
        with pytest.raises(StoreError) as err:
            PostgresStore(latin1, exclusive=True)
        message = str(err.value)
        assert f"PostgreSQL database {name} on" in message
        assert f"encoded in {encoding}, not UTF8" in message and "b'" not in message
        assert f"CREATE DATABASE {name}_utf8 ENCODING 'UTF8' TEMPLATE template0" in message
        with psycopg.connect(latin1, autocommit=True) as conn:  # nothing was made there
            tables = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
            assert tables.fetchone() == (0,)
    finally:
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(database))
