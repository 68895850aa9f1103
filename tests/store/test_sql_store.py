"""What only the SQL stores do: migrations, SQLite settings, and open_store's URLs."""

import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from sparegrid.coordinator.domain import Account
from sparegrid.coordinator.store import open_store
from sparegrid.coordinator.store.engine import SqlEngine
from sparegrid.coordinator.store.memory import MemoryStore
from sparegrid.coordinator.store.schema import MIGRATIONS
from sparegrid.coordinator.store.sql import SqlStore
from sparegrid.coordinator.store.sqlite import SqliteStore, Synchronous

Opener = Callable[[], SqlStore]

LATEST = MIGRATIONS[-1][0]
MIGRATED = (
    "INSERT INTO accounts (id, name, key_hash, is_admin, created_at)"
    " VALUES ('acc-m', 'migrated', 'hash-m', FALSE, 0)"
)


def alice() -> Account:
    return Account("acc-alice", "alice", "hash-alice", False, 1.0)


def test_reopening_keeps_data_and_applies_nothing_again(open_sql_store: Opener) -> None:
    first = open_sql_store()
    assert first.schema_version() == LATEST
    first.create_account(alice())
    first.close()
    again = open_sql_store()
    assert again.schema_version() == LATEST
    assert again.get_account("acc-alice") == alice()


def test_reopening_applies_only_missing_migrations(
    open_sql_store: Opener, monkeypatch: pytest.MonkeyPatch
) -> None:
    open_sql_store().create_account(alice())
    monkeypatch.setattr(SqlEngine, "migrations", [*MIGRATIONS, (LATEST + 1, MIGRATED)])
    upgraded = open_sql_store()
    assert upgraded.schema_version() == LATEST + 1
    assert [a.name for a in upgraded.list_accounts()] == ["alice", "migrated"]
    # Run again, the insert would clash on the account name.
    assert open_sql_store().schema_version() == LATEST + 1


def test_inline_blobs_kept_before_they_were_recorded_are_recorded_once(
    open_sql_store: Opener, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Migration 14 records the inline blobs of older versions as used at the upgrade, so
    the sweep collects them one retention later, unless a job needs them."""
    inline, both = "1" * 64, "2" * 64
    monkeypatch.setattr(SqlEngine, "migrations", MIGRATIONS[:13])
    old = open_sql_store()
    assert old.schema_version() == 13
    with old.transaction():
        for digest in (inline, both):
            old._run("INSERT INTO inline_blobs (digest, data) VALUES (?, ?)", (digest, b"xyz"))
        old._run("INSERT INTO blobs (digest, size, used_at) VALUES (?, 3, 5.0)", (both,))
    old.close()
    monkeypatch.setattr(SqlEngine, "migrations", MIGRATIONS)
    before = time.time()
    store = open_sql_store()
    assert store.stale_blobs(before=before - 10) == [(both, 3)]  # kept its own last use
    assert store.stale_blobs(before=time.time() + 10) == [(both, 3), (inline, 3)]
    assert store.drop_blobs([inline, both]) == {inline}  # `both` has a file to delete
    assert store.get_inline_blob(inline) is None and store.get_inline_blob(both) is None


def test_a_failing_migration_changes_nothing(
    open_sql_store: Opener, monkeypatch: pytest.MonkeyPatch
) -> None:
    open_sql_store()
    broken = f"{MIGRATED}; CREATE TABLE extra (x INTEGER); INSERT INTO missing VALUES (1)"
    monkeypatch.setattr(SqlEngine, "migrations", [*MIGRATIONS, (LATEST + 1, broken)])
    with pytest.raises(Exception, match="missing"):
        open_sql_store()
    monkeypatch.setattr(SqlEngine, "migrations", [*MIGRATIONS, (LATEST + 1, MIGRATED)])
    store = open_sql_store()
    assert store.schema_version() == LATEST + 1
    assert [a.name for a in store.list_accounts()] == ["migrated"]


@pytest.mark.parametrize(("synchronous", "level"), [("FULL", 2), ("NORMAL", 1)])
def test_sqlite_settings(tmp_path: Path, synchronous: Synchronous, level: int) -> None:
    store = SqliteStore(tmp_path / "s.db", synchronous=synchronous)
    try:
        pragmas = {p: store._query(f"PRAGMA {p}")[0][0] for p in ("journal_mode", "synchronous")}
        pragmas["foreign_keys"] = store._query("PRAGMA foreign_keys")[0][0]
        assert pragmas == {"journal_mode": "wal", "synchronous": level, "foreign_keys": 1}
    finally:
        store.close()
    with pytest.raises(ValueError, match="synchronous"):
        SqliteStore(tmp_path / "t.db", synchronous="OFF")  # type: ignore[arg-type]


def test_open_store_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert isinstance(open_store("memory:"), MemoryStore)
    for url, path in [
        ("sqlite:///rel.db", tmp_path / "rel.db"),
        (f"sqlite:///{tmp_path}/abs.db", tmp_path / "abs.db"),  # tmp_path starts with "/"
        ("plain.db", tmp_path / "plain.db"),
        (str(tmp_path / "plain-abs.db"), tmp_path / "plain-abs.db"),
        ("sqlite:///normal.db?synchronous=NORMAL", tmp_path / "normal.db"),
    ]:
        store = open_store(url)
        try:
            assert isinstance(store, SqliteStore)
            assert Path(os.path.abspath(store.path)) == path
            assert store.schema_version() == LATEST
        finally:
            store.close()
    for bad in ["mysql://u@h/db", "redis:x", "", "sqlite:///x.db?synchronous=OFF", "sqlite:///"]:
        with pytest.raises(ValueError, match="memory:"):
            open_store(bad)


@pytest.mark.postgres
def test_open_store_postgres_url() -> None:
    import psycopg
    from psycopg import sql

    dsn = os.environ.get("SPAREGRID_TEST_POSTGRES", "")
    if not dsn:
        pytest.skip("set SPAREGRID_TEST_POSTGRES to a PostgreSQL DSN to run")
    schema = sql.Identifier(f"sparegrid_test_{uuid.uuid4().hex[:12]}")
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE SCHEMA {}").format(schema))
        try:
            separator = "&" if "?" in dsn else "?"
            store = open_store(f"{dsn}{separator}options=-csearch_path%3D{schema.as_string()}")
            try:
                assert type(store).__name__ == "PostgresStore"
                store.create_account(alice())
            finally:
                store.close()
            table = sql.SQL("SELECT name FROM {}.accounts").format(schema)
            assert admin.execute(table).fetchall() == [("alice",)]
        finally:
            admin.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(schema))
