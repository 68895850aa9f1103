"""`coordinator backup | restore` as an operator reads them: errors on stderr (they went to
stdout, so `backup ... > log` hid them), and a restore that says how to start the restored
directory (it said `coordinator serve`, which serves ./sparegrid-coordinator instead)."""

import stat
from pathlib import Path

import pytest

from sparegrid.cli.main import main
from sparegrid.coordinator.store.sqlite import SqliteStore


def test_a_backup_of_no_database_fails_on_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["coordinator", "backup", str(tmp_path / "b"), "--data-dir", str(tmp_path / "x")])
    out, err = capsys.readouterr()
    assert code == 1 and out == ""
    assert err.startswith(f"error: no database at {tmp_path / 'x' / 'coordinator.db'}")
    assert "a coordinator on PostgreSQL: give its --database postgresql://... too" in err


def test_a_restore_names_the_directory_to_serve(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "coord"
    data.mkdir()
    SqliteStore(data / "coordinator.db").close()
    backup = tmp_path / "backup"
    assert main(["coordinator", "backup", str(backup), "--data-dir", str(data)]) == 0
    capsys.readouterr()
    fresh = tmp_path / "coord restored"
    assert main(["coordinator", "restore", str(backup), "--data-dir", str(fresh)]) == 0
    out, err = capsys.readouterr()
    assert out == f"restored {backup} into {fresh} (0 blob(s))\n"
    assert err == (
        f"hint: start it with `sparegrid coordinator serve --data-dir '{fresh}'`, then check "
        "`sparegrid admin ledger check`\n"
    )
    again = main(["coordinator", "restore", str(backup), "--data-dir", str(fresh)])
    out, err = capsys.readouterr()
    assert again == 1 and out == ""
    assert err.startswith(f"error: {fresh} already holds coordinator.db")


def test_backups_and_restored_directories_are_readable_by_this_user_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A backup held coordinator.db (every client's jobs, the ledger) and the blobs readable
    by every user of the machine, in a directory anyone could list: only the keys were
    0600. Now the backup, and a data directory restored from it, are 0700 and the database
    copies 0600."""
    data = tmp_path / "coord"
    data.mkdir()
    SqliteStore(data / "coordinator.db").close()
    (data / "admin.key").write_text("sg_x\n")
    backup = tmp_path / "backups" / "one"
    assert main(["coordinator", "backup", str(backup), "--data-dir", str(data)]) == 0
    assert mode(backup) == 0o700
    assert mode(backup / "coordinator.db") == mode(backup / "admin.key") == 0o600
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)  # an empty directory the operator made beforehand
    assert main(["coordinator", "backup", str(shared), "--data-dir", str(data)]) == 0
    assert mode(shared) == 0o700
    fresh = tmp_path / "restored"
    assert main(["coordinator", "restore", str(backup), "--data-dir", str(fresh)]) == 0
    assert mode(fresh) == 0o700
    assert mode(fresh / "coordinator.db") == mode(fresh / "admin.key") == 0o600
    capsys.readouterr()


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_database_password_is_never_printed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The PostgreSQL backup's pg_dump hint and the restore's `serve` hint printed the URL
    as given, password included: kept out of `ps` through $SPAREGRID_DATABASE, it ended
    up in the terminal and in whatever log took the command's output."""
    url = "postgresql://grid:hunter2@db.example:5432/grid"
    data = tmp_path / "coord"
    data.mkdir()
    (data / "coordinator.key").write_bytes(b"k" * 32)
    backup = tmp_path / "backup"
    argv = ["--data-dir", str(data), "--database", url]
    assert main(["coordinator", "backup", str(backup), *argv]) == 0
    out, err = capsys.readouterr()
    assert "'postgresql://grid@db.example:5432/grid'" in out
    assert "$PGPASSWORD or ~/.pgpass" in err
    fresh = tmp_path / "restored"
    argv = ["--data-dir", str(fresh), "--database", url]
    assert main(["coordinator", "restore", str(backup), *argv]) == 0
    out2, err2 = capsys.readouterr()
    assert "--database postgresql://grid@db.example:5432/grid`" in err2
    assert "hunter2" not in out + err + out2 + err2
