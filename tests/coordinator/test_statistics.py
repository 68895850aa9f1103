"""A coordinator on PostgreSQL keeps the planner's statistics of its tables current itself
(ANALYZE off the event loop), so plans made while the tables were empty do not outlive
them, autovacuum or not (tests/store/test_postgres.py shows what such a plan cost)."""

import asyncio
import os
import time
import uuid
from pathlib import Path

import pytest

from sparegrid.coordinator.app import App
from sparegrid.coordinator.domain import MINT, Posting, Transaction
from sparegrid.coordinator.settings import Settings
from tests.coordinator.conftest import drop_schema, open_backend

pytestmark = pytest.mark.skipif(
    not os.environ.get("SPAREGRID_TEST_POSTGRES"), reason="needs SPAREGRID_TEST_POSTGRES"
)


def analyzed(schema: str) -> bool:
    import psycopg

    with psycopg.connect(os.environ["SPAREGRID_TEST_POSTGRES"], autocommit=True) as conn:
        row = conn.execute(
            "SELECT last_analyze IS NOT NULL FROM pg_stat_user_tables"
            " WHERE schemaname = %s AND relname = 'transactions'",
            (schema,),
        ).fetchone()
    return bool(row and row[0])


async def test_a_table_that_grew_gets_fresh_statistics_while_the_coordinator_runs(
    tmp_path: Path,
) -> None:
    schema = f"t_{uuid.uuid4().hex}"
    store = open_backend("postgres", tmp_path, schema)
    app = App(store, Settings(data_dir=tmp_path, statistics_seconds=0.05))
    app.start()
    try:
        grants = [
            Transaction(f"g{n}", f"g{n}", "grant", [Posting(MINT, -1), Posting(f"acct{n}", 1)])
            for n in range(400)
        ]
        store.post_many(grants)
        assert not analyzed(schema)
        with store.transaction():  # the counts of changed rows reach the server now
            store._query("SELECT pg_stat_force_next_flush()")  # type: ignore[attr-defined]
        deadline = time.monotonic() + 10
        while not analyzed(schema):
            assert time.monotonic() < deadline, "transactions never got fresh statistics"
            await asyncio.sleep(0.05)
    finally:
        await app.stop()
        drop_schema(schema)
