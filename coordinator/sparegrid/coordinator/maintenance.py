"""`sparegrid coordinator backup | restore | migrate`: what an operator needs to keep a
coordinator's state safe across failures and upgrades.

A backup holds what a coordinator cannot rebuild: the database (SQLite: an online copy
through SQLite's backup API, consistent while the coordinator runs, WAL included;
PostgreSQL: taken with `pg_dump`, which this command points to), `coordinator.key` (it
countersigns receipts that clients verify), `admin.key` and the blobs. The database is
copied first and the blobs after it, so every blob the copy refers to is in the backup
(blobs are content-addressed and never change; one uploaded meanwhile is kept too, and
collected later if nothing needs it).
"""

import argparse
import json
import logging
import os
import shlex
import shutil
import sqlite3
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from sparegrid.coordinator import config
from sparegrid.coordinator.store.schema import MIGRATIONS
from sparegrid.wire import is_digest
from sparegrid.wire.config import ConfigError

log = logging.getLogger("sparegrid.coordinator")

MANIFEST = "backup.json"
DATABASE = "coordinator.db"
PG_DUMP = "coordinator.pgdump"  # where backup's pg_dump hint writes, and restore looks
KEYS = ("coordinator.key", "admin.key")
_WHERE = frozenset({"data_dir", "database"})


class MaintenanceError(Exception):
    """What went wrong, and what to do; nothing was changed."""


def register(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    p = commands.add_parser(
        "backup",
        help="copy the database (online), the keys and the blobs into a new directory",
    )
    p.add_argument("dir", type=Path, metavar="DIR", help="where to write it (new or empty)")
    config.add_flags(p, _WHERE)
    p.set_defaults(func=backup_command)
    p = commands.add_parser(
        "restore",
        help="restore a backup into a data directory that holds no coordinator yet",
    )
    p.add_argument("dir", type=Path, metavar="DIR", help="a directory `backup` wrote")
    config.add_flags(p, _WHERE)
    p.set_defaults(func=restore_command)
    p = commands.add_parser(
        "migrate",
        help="bring the database schema up to this version (serve does this at start)",
    )
    p.add_argument(
        "--check",
        action="store_true",
        help="only say whether the schema needs migrating (exit 1 if so); change nothing",
    )
    config.add_flags(p, _WHERE)
    p.set_defaults(func=migrate_command)


@dataclass(frozen=True)
class Target:
    data_dir: Path
    database: str  # a URL, as `serve` takes it

    @property
    def sqlite_path(self) -> Path | None:
        """The SQLite file, or None for PostgreSQL."""
        url = self.database
        if url.startswith(("postgresql://", "postgres://")):
            return None
        path = url.removeprefix("sqlite:///").partition("?")[0]
        return Path(path)


def _target(args: argparse.Namespace) -> Target:
    try:
        serving = config.load(args, os.environ)
    except ConfigError as exc:
        raise MaintenanceError(str(exc)) from None
    return Target(serving.settings.data_dir, serving.database_url)


PASSWORD_LEFT_OUT = (
    "hint: the database's password is left out of what is shown here; give it through "
    "$PGPASSWORD or ~/.pgpass (and the URL through $SPAREGRID_DATABASE), not on a command line"
)


def shown_url(url: str) -> str:
    """A database URL fit to print: its password, if it holds one, left out (pg_dump, psql
    and the coordinator read it from $PGPASSWORD or ~/.pgpass instead)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = f"{parts.username}@" if parts.username else ""
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    port = f":{parts.port}" if parts.port else ""
    return urlunsplit(parts._replace(netloc=f"{user}{host}{port}"))


def _run(action: Any, args: argparse.Namespace) -> int:
    logging.basicConfig(level="INFO", format="%(message)s")
    try:
        return int(action(_target(args), args))
    except MaintenanceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def backup_command(args: argparse.Namespace) -> int:
    return _run(lambda target, a: backup(target, a.dir), args)


def restore_command(args: argparse.Namespace) -> int:
    return _run(lambda target, a: restore(a.dir, target), args)


def migrate_command(args: argparse.Namespace) -> int:
    return _run(lambda target, a: migrate(target, check=a.check), args)


# --- backup --------------------------------------------------------------------------------


def backup(target: Target, dest: Path) -> int:
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise MaintenanceError(f"{dest} exists and is not an empty directory; pick a new one")
    db = target.sqlite_path
    if db is not None and not db.is_file():
        raise MaintenanceError(
            f"no database at {db}: is --data-dir right? (a coordinator on PostgreSQL: give "
            "its --database postgresql://... too)"
        )
    _private_dir(dest)
    started = time.time()
    manifest: dict[str, Any] = {"created_at": started, "schema_version": 0}
    if db is not None:
        manifest["database"] = "sqlite"
        manifest["schema_version"] = _copy_sqlite(db, dest / DATABASE)
    else:  # the schema the database had when the keys were saved: a record for a restore
        manifest["database"] = "postgresql"
        try:  # the keys are saved even where the database cannot be reached from here
            manifest["schema_version"] = _schema_version(target) or 0
        except MaintenanceError:
            manifest["schema_version"] = None
    manifest["keys"] = _copy_keys(target.data_dir, dest)
    manifest["blobs"] = _copy_blobs(target.data_dir / "blobs", dest / "blobs")
    (dest / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    what = f"{len(manifest['keys'])} key(s), {manifest['blobs']} blob(s)"
    if db is None:
        print(
            f"saved {what} in {dest}; the database is PostgreSQL (schema "
            f"{manifest['schema_version'] or 'unknown: not reachable from here'}): back it "
            "up with pg_dump, e.g. (umask 077; "
            f"pg_dump --format=custom --file {dest / PG_DUMP} "
            f"'{shown_url(target.database)}') (restore it with pg_restore); umask 077 keeps "
            "the dump readable by you only, as the rest of the backup is"
        )
        if shown_url(target.database) != target.database:
            print(PASSWORD_LEFT_OUT, file=sys.stderr)
    else:
        print(
            f"backed up {db} (schema {manifest['schema_version']}) and {what} to {dest} "
            f"in {time.time() - started:.1f}s"
        )
    return 0


def _private_dir(path: Path) -> None:
    """A backup, or a restored data directory, readable by this user only: it holds the
    keys, the database (every client's jobs, the ledger) and the clients' blobs. `path`
    holds no backup or coordinator yet (both commands refuse one that does), so it is ours
    to tighten."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        path.chmod(0o700)
    except PermissionError:
        log.warning("cannot make %s private (chmod 700): others may read what it holds", path)


def _copy_sqlite(source: Path, dest: Path) -> int:
    """An online copy through SQLite's backup API: one consistent snapshot, the WAL's
    committed transactions included, while the coordinator goes on writing. The copy is
    created readable by this user only (SQLite gives its journal the same mode)."""
    src = sqlite3.connect(source.resolve().as_uri() + "?mode=ro", uri=True)
    os.close(os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    out = sqlite3.connect(dest)
    try:
        src.backup(out)
        out.execute("PRAGMA journal_mode = DELETE")  # one self-contained file
        ((version,),) = out.execute("SELECT MAX(version) FROM schema_version").fetchall()
    except sqlite3.DatabaseError as exc:
        raise MaintenanceError(f"cannot back up {source}: {exc}") from None
    finally:
        out.close()
        src.close()
    return int(version or 0)


def _copy_keys(data_dir: Path, dest: Path) -> list[str]:
    copied = []
    for name in KEYS:
        if (data_dir / name).is_file():
            _copy_secret(data_dir / name, dest / name)
            copied.append(name)
        else:
            log.warning("%s is missing: the backup holds no %s", data_dir / name, name)
    return copied


def _copy_secret(source: Path, dest: Path) -> None:
    """A copy readable by this user only (a key, a database)."""
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out, source.open("rb") as src:
        shutil.copyfileobj(src, out, 1 << 20)


def _copy_blobs(source: Path, dest: Path) -> int:
    """The finished blobs (sha256/), not partial uploads nor the trash."""
    count = 0
    stored = source / "sha256"
    if not stored.is_dir():
        return 0
    for folder in sorted(stored.iterdir()):
        if folder.is_symlink() or not folder.is_dir():
            continue
        for blob in sorted(folder.iterdir()):
            # only what a blob store writes: a regular file named by its digest
            if blob.is_symlink() or not is_digest(blob.name) or blob.name[:2] != folder.name:
                continue
            target = dest / "sha256" / folder.name / blob.name
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                shutil.copyfile(blob, target)
            except FileNotFoundError:  # collected meanwhile: nothing needed it
                continue
            count += 1
    return count


# --- restore -------------------------------------------------------------------------------


def restore(source: Path, target: Target) -> int:
    manifest = _manifest(source)
    data_dir = target.data_dir
    taken = [n for n in (DATABASE, *KEYS, "blobs") if (data_dir / n).exists()]
    if taken:
        raise MaintenanceError(
            f"{data_dir} already holds {', '.join(taken)}: restore into a new data directory "
            "(--data-dir), or move those aside first"
        )
    db = target.sqlite_path
    if manifest.get("database") == "sqlite":
        if db is None:
            raise MaintenanceError(
                f"{source} holds a SQLite database, but the target is PostgreSQL"
            )
        if db.exists():
            raise MaintenanceError(f"{db} exists: restore into a new place, or move it aside")
    elif db is not None:  # its serve hint started an empty SQLite coordinator with the old key
        raise MaintenanceError(
            f"{source} is the backup of a coordinator on PostgreSQL: give --database "
            "postgresql://USER@HOST/DB, the database its pg_dump is restored into"
        )
    _private_dir(data_dir)
    if manifest.get("database") == "sqlite" and db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
        _copy_secret(source / DATABASE, db)
    for name in KEYS:  # only these names, whatever the manifest says
        if name in manifest.get("keys", []) and (source / name).is_file():
            _copy_secret(source / name, data_dir / name)
    blobs = _copy_blobs(source / "blobs", data_dir / "blobs")
    print(f"restored {source} into {data_dir} ({blobs} blob(s))")
    if manifest.get("database") != "sqlite":
        dump = source / PG_DUMP
        where = "" if dump.is_file() else " (the file its pg_dump wrote)"
        print(
            "the database is PostgreSQL: restore the dump taken with the backup into a new "
            "UTF-8 database (createdb --encoding UTF8 --template template0 NAME), e.g. "
            f"pg_restore --no-owner --dbname '{shown_url(target.database)}' "
            f"{shlex.quote(str(dump))}{where}"
        )
    serve = f"sparegrid coordinator serve --data-dir {shlex.quote(str(data_dir))}"
    if target.sqlite_path != data_dir / DATABASE:  # PostgreSQL, or SQLite elsewhere
        serve += f" --database {shlex.quote(shown_url(target.database))}"
    print(
        f"hint: start it with `{serve}`, then check `sparegrid admin ledger check`", file=sys.stderr
    )
    if shown_url(target.database) != target.database:
        print(PASSWORD_LEFT_OUT, file=sys.stderr)
    return 0


def _manifest(source: Path) -> dict[str, Any]:
    try:
        manifest = json.loads((source / MANIFEST).read_text())
    except FileNotFoundError:
        raise MaintenanceError(
            f"{source} is not a backup: it has no {MANIFEST} (`coordinator backup DIR` writes one)"
        ) from None
    except (OSError, ValueError) as exc:
        raise MaintenanceError(f"cannot read {source / MANIFEST}: {exc}") from None
    if not isinstance(manifest, dict):
        raise MaintenanceError(f"{source / MANIFEST} is not a backup manifest")
    if manifest.get("database") == "sqlite" and not (source / DATABASE).is_file():
        raise MaintenanceError(f"{source} lacks {DATABASE}: the backup is incomplete")
    return manifest


# --- migrate -------------------------------------------------------------------------------


def migrate(target: Target, check: bool) -> int:
    latest = MIGRATIONS[-1][0]
    current = _schema_version(target)
    if current is None:
        print(
            f"no database at {target.database}; `coordinator serve` creates it (a "
            "coordinator on PostgreSQL: give its --database postgresql://... too)"
        )
        return 1 if check else 0
    if current > latest:
        print(
            f"the database is at schema {current}, newer than this sparegrid knows "
            f"({latest}): upgrade sparegrid, or restore the backup taken before the upgrade"
        )
        return 2
    pending = [v for v, _ in MIGRATIONS if v > current]
    if not pending:
        print(f"the schema is up to date (version {current})")
        return 0
    if check:
        print(
            f"the schema is at version {current}; this sparegrid needs {latest} "
            f"({len(pending)} migration(s) to apply: {', '.join(map(str, pending))}); take a "
            "backup, then run `sparegrid coordinator migrate` (or `serve`, which migrates at "
            "start)"
        )
        return 1
    from sparegrid.coordinator.store import StoreError, open_store

    try:  # opening applies the migrations; exclusive: never under a serving coordinator
        open_store(target.database, exclusive=True).close()
    except StoreError as exc:
        raise MaintenanceError(f"{exc}; stop the coordinator, then migrate") from None
    print(f"migrated the schema from version {current} to {latest}")
    return 0


def _schema_version(target: Target) -> int | None:
    """The schema version applied, read without changing anything; None: no database."""
    db = target.sqlite_path
    if db is not None:
        if not db.is_file():
            return None
        conn = sqlite3.connect(db.resolve().as_uri() + "?mode=ro", uri=True)
        try:
            return _read_version(conn.execute)
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return 0
            raise MaintenanceError(f"cannot read {db}: {exc}") from None
        except sqlite3.DatabaseError as exc:
            raise MaintenanceError(f"cannot read {db}: {exc}") from None
        finally:
            conn.close()
    import psycopg

    try:
        with psycopg.connect(target.database) as pg:
            pg.read_only = True
            return _read_version(pg.execute)
    except psycopg.errors.UndefinedTable:
        return 0
    except psycopg.Error as exc:
        raise MaintenanceError(f"cannot read the PostgreSQL database: {exc}") from None


def _read_version(execute: Any) -> int:
    ((version,),) = execute("SELECT MAX(version) FROM schema_version").fetchall()
    return int(version or 0)
