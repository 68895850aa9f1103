"""`coordinator backup | restore | migrate [--check]`: refusals that change nothing, a
backup of a running coordinator's SQLite file in WAL mode, and schema checks."""

import json
import os
import sqlite3
import uuid
from pathlib import Path
from typing import ClassVar

import pytest

from sparegrid.cli.main import main
from sparegrid.coordinator.app import App
from sparegrid.coordinator.cli import ensure_admin
from sparegrid.coordinator.settings import Settings
from sparegrid.coordinator.store.schema import MIGRATIONS
from sparegrid.coordinator.store.sqlite import SqliteStore

LATEST = MIGRATIONS[-1][0]


class OldStore(SqliteStore):
    """A database made by the release before the latest migration."""

    migrations: ClassVar[list[tuple[int, str]]] = MIGRATIONS[:-1]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["coordinator", *argv])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def coordinator(data: Path) -> App:
    """A coordinator's state as `serve` leaves it: database (open, in WAL) and keys."""
    app = App(SqliteStore(data / "coordinator.db"), Settings(data_dir=data))
    ensure_admin(app, data)
    app.accounts.create("alice", 500)
    return app


def schema_version(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0])
    finally:
        conn.close()


def test_backup_of_an_open_database_restores(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, dest, fresh = tmp_path / "data", tmp_path / "backup", tmp_path / "fresh"
    data.mkdir()
    app = coordinator(data)
    blob = data / "blobs" / "sha256" / "ab" / ("ab" + "0" * 62)
    blob.parent.mkdir(parents=True)
    blob.write_bytes(b"content")
    try:
        # written after the last checkpoint: only in the -wal file until one runs
        app.accounts.create("bob", 7)
        assert (data / "coordinator.db-wal").stat().st_size > 0
        code, out = run(capsys, "backup", str(dest), "--data-dir", str(data))
        assert code == 0, out
    finally:
        app.store.close()
    assert f"schema {LATEST}" in out
    assert not (dest / "coordinator.db-wal").exists()  # one self-contained file
    code, out = run(capsys, "restore", str(dest), "--data-dir", str(fresh))
    assert code == 0, out
    store = SqliteStore(fresh / "coordinator.db")
    try:
        assert {a.name for a in store.list_accounts()} == {"admin", "alice", "bob"}
        assert store.balance("client:bob") == 7
    finally:
        store.close()
    assert (fresh / "admin.key").read_text() == (data / "admin.key").read_text()
    assert (fresh / "coordinator.key").read_bytes() == (data / "coordinator.key").read_bytes()
    assert oct((fresh / "admin.key").stat().st_mode & 0o777) == "0o600"
    assert (fresh / blob.relative_to(data)).read_bytes() == b"content"


def test_backup_and_restore_refuse_what_would_lose_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, dest = tmp_path / "data", tmp_path / "backup"
    data.mkdir()
    coordinator(data).store.close()
    dest.mkdir()
    (dest / "old").write_text("x")
    code, out = run(capsys, "backup", str(dest), "--data-dir", str(data))
    assert code == 1 and "is not an empty directory" in out
    assert os.listdir(dest) == ["old"]
    code, out = run(capsys, "backup", str(tmp_path / "b2"), "--data-dir", str(tmp_path / "none"))
    assert code == 1 and "no database at" in out
    assert not (tmp_path / "b2").exists()
    code, out = run(capsys, "restore", str(dest), "--data-dir", str(tmp_path / "r"))
    assert code == 1 and "is not a backup" in out
    assert not (tmp_path / "r").exists()
    good = tmp_path / "good"
    assert run(capsys, "backup", str(good), "--data-dir", str(data))[0] == 0
    before = {p.name: p.stat().st_mtime_ns for p in data.iterdir()}
    code, out = run(capsys, "restore", str(good), "--data-dir", str(data))
    assert code == 1 and "already holds coordinator.db" in out
    assert {p.name: p.stat().st_mtime_ns for p in data.iterdir()} == before


def test_migrate_check_says_what_is_pending_and_changes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    OldStore(data / "coordinator.db").close()
    db = data / "coordinator.db"
    assert schema_version(db) == LATEST - 1
    before = db.read_bytes()
    code, out = run(capsys, "migrate", "--check", "--data-dir", str(data))
    assert code == 1
    assert f"schema is at version {LATEST - 1}; this sparegrid needs {LATEST}" in out
    assert "take a backup" in out
    assert db.read_bytes() == before and schema_version(db) == LATEST - 1
    code, out = run(capsys, "migrate", "--data-dir", str(data))
    assert code == 0 and f"to {LATEST}" in out
    assert schema_version(db) == LATEST
    code, out = run(capsys, "migrate", "--check", "--data-dir", str(data))
    assert code == 0 and "up to date" in out
    code, out = run(capsys, "migrate", "--check", "--data-dir", str(tmp_path / "none"))
    assert code == 1 and "no database" in out
    assert not (tmp_path / "none").exists()


def test_migrate_check_refuses_a_newer_schema(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "coordinator.db"
    SqliteStore(db).close()
    conn = sqlite3.connect(db)
    conn.execute("INSERT INTO schema_version VALUES (?, 0)", (LATEST + 1,))
    conn.commit()
    conn.close()
    code, out = run(capsys, "migrate", "--check", "--data-dir", str(tmp_path))
    assert code == 2 and "newer than this sparegrid knows" in out


@pytest.mark.skipif(
    not os.environ.get("SPAREGRID_TEST_POSTGRES"), reason="SPAREGRID_TEST_POSTGRES not set"
)
def test_postgres_backup_points_to_pg_dump_and_keeps_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sparegrid.coordinator.store.postgres import PostgresStore
    from tests.coordinator.conftest import drop_schema

    schema = f"t_{uuid.uuid4().hex}"
    url = os.environ["SPAREGRID_TEST_POSTGRES"]
    data = tmp_path / "data"
    data.mkdir()
    store = PostgresStore(url, schema=schema)
    try:
        ensure_admin(App(store, Settings(data_dir=data)), data)
        code, out = run(
            capsys, "backup", str(tmp_path / "b"), "--data-dir", str(data), "--database", url
        )
        assert code == 0, out
        assert "pg_dump --format=custom" in out and "pg_restore" in out
        assert (tmp_path / "b" / "admin.key").read_text() == (data / "admin.key").read_text()
        # restored without --database, its hint started an empty SQLite coordinator
        code, out = run(capsys, "restore", str(tmp_path / "b"), "--data-dir", str(tmp_path / "r"))
        assert code == 1 and "backup of a coordinator on PostgreSQL: give --database" in out
        assert not (tmp_path / "r").exists()
        restored = ("restore", str(tmp_path / "b"), "--data-dir", str(tmp_path / "r"))
        code, out = run(capsys, *restored, "--database", url)
        assert code == 0, out
        dump = tmp_path / "b" / "coordinator.pgdump"
        assert f"pg_restore --no-owner --dbname '{url}' {dump}" in " ".join(out.split())
        assert f"--data-dir {tmp_path / 'r'} --database {url}`" in out
        code, out = run(capsys, "migrate", "--check", "--data-dir", str(data))  # no --database
        assert code == 1 and "on PostgreSQL: give its --database postgresql://" in out
    finally:
        store.close()
        drop_schema(schema)


def test_a_hostile_backup_writes_nothing_outside_the_data_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, good = tmp_path / "data", tmp_path / "good"
    data.mkdir()
    coordinator(data).store.close()
    assert run(capsys, "backup", str(good), "--data-dir", str(data))[0] == 0
    secret = tmp_path / "secret.txt"
    secret.write_text("not yours")
    (good / "backup.json").write_text('{"database": "sqlite", "keys": ["../escaped", "admin.key"]}')
    (good / "escaped").write_text("x")
    folder = good / "blobs" / "sha256" / "cd"
    folder.mkdir(parents=True)
    (folder / ("cd" + "1" * 62)).symlink_to(secret)  # a link to a file outside
    (folder / "not-a-digest").write_text("x")
    fresh = tmp_path / "nested" / "fresh"
    code, out = run(capsys, "restore", str(good), "--data-dir", str(fresh))
    assert code == 0, out
    assert not (tmp_path / "nested" / "escaped").exists()
    assert sorted(p.name for p in fresh.iterdir()) == ["admin.key", "coordinator.db"]


def test_migrate_refuses_a_database_a_coordinator_serves_from(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`coordinator migrate` beside a running coordinator changed the schema under it; now
    it stops, saying to stop the coordinator first, and changes nothing."""
    data = tmp_path / "data"
    data.mkdir()
    OldStore(data / "coordinator.db").close()
    serving = OldStore(data / "coordinator.db", exclusive=True)  # what `serve` holds
    try:
        code, out = run(capsys, "migrate", "--data-dir", str(data))
        assert code == 1
        assert f"another coordinator (process {os.getpid()}) is serving from" in out
        assert "stop the coordinator, then migrate" in out
        assert schema_version(data / "coordinator.db") == LATEST - 1
    finally:
        serving.close()
    assert run(capsys, "migrate", "--data-dir", str(data))[0] == 0
    assert schema_version(data / "coordinator.db") == LATEST


@pytest.mark.skipif(not os.environ.get("SPAREGRID_TEST_POSTGRES"), reason="needs PostgreSQL")
def test_a_postgres_backup_records_its_schema_and_a_private_dump_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """backup.json of a coordinator on PostgreSQL said schema 0 whatever the database held,
    and the pg_dump command it printed wrote a dump others could read beside the private
    keys: it records the schema read from the database, and the command keeps the dump
    private (umask 077)."""
    from sparegrid.coordinator.store.postgres import PostgresStore
    from sparegrid.coordinator.store.schema import MIGRATIONS
    from tests.coordinator.conftest import drop_schema

    schema = f"t_{uuid.uuid4().hex}"
    base = os.environ["SPAREGRID_TEST_POSTGRES"]
    url = f"{base}{'&' if '?' in base else '?'}options=-csearch_path%3D{schema}"
    data = tmp_path / "data"
    data.mkdir()
    store = PostgresStore(base, schema=schema)
    try:
        ensure_admin(App(store, Settings(data_dir=data)), data)
        code, out = run(
            capsys, "backup", str(tmp_path / "b"), "--data-dir", str(data), "--database", url
        )
        assert code == 0, out
        manifest = json.loads((tmp_path / "b" / "backup.json").read_text())
        assert manifest["database"] == "postgresql"
        assert manifest["schema_version"] == max(v for v, _ in MIGRATIONS) > 0
        assert "(umask 077; pg_dump --format=custom" in " ".join(out.split())
    finally:
        store.close()
        drop_schema(schema)
