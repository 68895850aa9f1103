"""Damaged SQLite state at start: a torn -wal file that silently dropped acknowledged
commits, and a damaged page. Both stop the coordinator with one line naming the file."""

import logging
import os
import shutil
from pathlib import Path

import pytest

from sparegrid.cli.main import build_parser
from sparegrid.coordinator.domain import Account, Posting, Transaction, client_account
from sparegrid.coordinator.store import open_store
from sparegrid.coordinator.store.base import StoreUnavailable
from sparegrid.coordinator.store.sqlite import SqliteStore, StoreDamaged

PAGE = 4096
FRAME = 24 + PAGE  # a WAL frame: its header and one page


def grant(n: int) -> Transaction:
    key = f"grant-{n}"
    postings = [Posting("mint", -n), Posting(client_account("alice"), n)]
    return Transaction(key, key, "grant", postings, created_at=float(n))


def witnessed(path: Path) -> int:
    return int(Path(f"{path}-seq").read_text())


def test_commits_are_counted_once_each_and_reads_are_not(tmp_path: Path) -> None:
    path = tmp_path / "coordinator.db"
    store = SqliteStore(path)
    start = witnessed(path)
    store.post(grant(1))
    assert witnessed(path) == start + 1
    with store.transaction():  # many writes, one commit
        for n in range(2, 6):
            store.post(grant(n))
    assert witnessed(path) == start + 2
    store.balance(client_account("alice"))  # a read: no commit counted
    store.list_accounts()
    assert witnessed(path) == start + 2
    with pytest.raises(RuntimeError), store.transaction():
        store.post(grant(9))
        raise RuntimeError("rolled back")
    store.balance(client_account("alice"))
    assert witnessed(path) == start + 2
    store.close()
    again = SqliteStore(path)  # a clean reopen: nothing to report
    assert again.balance(client_account("alice")) == 15
    again.close()


@pytest.mark.parametrize("how", ["removed", "replaced"])
def test_a_file_removed_or_replaced_under_the_store_takes_no_commit(
    tmp_path: Path, how: str
) -> None:
    path = tmp_path / "coordinator.db"
    store = SqliteStore(path)
    store.post(grant(1))
    shutil.copy(path, tmp_path / "copy.db")
    path.unlink()
    if how == "replaced":  # a copy put in its place is another file: the writes went on
        os.replace(tmp_path / "copy.db", path)  # into the old one, which it lacks
    with pytest.raises(StoreUnavailable, match=f"the database file {path} was removed or replaced"):
        store.post(grant(2))
    assert store.balance(client_account("alice")) == 1  # the write rolled back
    with pytest.raises(StoreUnavailable):
        store.reconnect()  # the coordinator stays paused
    store.close()


def test_a_torn_wal_that_lost_acknowledged_commits_is_refused(tmp_path: Path) -> None:
    """A crash tore the -wal file: SQLite replayed what was whole and dropped the rest,
    silently, taking results that had been acknowledged and paid with it."""
    path = tmp_path / "live" / "coordinator.db"
    path.parent.mkdir()
    store = SqliteStore(path)
    store.create_account(Account("acc-alice", "alice", "hash", False, 1.0))
    for n in range(1, 30):
        store.post(grant(n))
    wal = Path(f"{path}-wal")
    assert wal.stat().st_size > 10 * FRAME  # nothing checkpointed yet: all in the WAL
    crashed = tmp_path / "crashed"
    crashed.mkdir()
    shutil.copy(path, crashed / "coordinator.db")  # the disk as the crash left it
    shutil.copy(f"{path}-seq", crashed / "coordinator.db-seq")
    torn = wal.read_bytes()
    (crashed / "coordinator.db-wal").write_bytes(torn[: len(torn) - 3 * FRAME - 100])
    store.close()
    with pytest.raises(StoreDamaged) as damaged:
        SqliteStore(crashed / "coordinator.db")
    message = str(damaged.value)
    assert "coordinator.db-seq" in message and "were lost after they were committed" in message
    assert "delete" in message and "backup" in message
    os.unlink(crashed / "coordinator.db-seq")  # the operator's way on, with what is left
    reopened = SqliteStore(crashed / "coordinator.db")
    assert 0 < reopened.balance(client_account("alice")) < sum(range(1, 30))
    reopened.close()


def test_a_damaged_page_is_refused_at_start(tmp_path: Path) -> None:
    path = tmp_path / "coordinator.db"
    store = SqliteStore(path)
    store.create_account(Account("acc-alice", "alice", "hash", False, 1.0))
    with store.transaction():
        for n in range(1, 2000):
            store.post(grant(n))
    store.close()  # checkpointed: every page is in the main file
    size = path.stat().st_size
    assert size > 20 * PAGE
    with open(path, "r+b") as f:  # a page in the middle, overwritten
        f.seek((size // PAGE // 2) * PAGE)
        f.write(os.urandom(PAGE))
    with pytest.raises(StoreDamaged) as damaged:
        SqliteStore(path)
    assert str(path) in str(damaged.value) and "backup" in str(damaged.value)
    SqliteStore(path, check="off").close()  # opened anyway when asked not to check


def test_an_unreadable_witness_is_written_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "coordinator.db"
    SqliteStore(path).close()
    Path(f"{path}-seq").write_bytes(b"\x00garbage")
    with caplog.at_level(logging.WARNING):
        store = SqliteStore(path)
    assert "not a commit count" in caplog.text
    store.post(grant(1))
    assert witnessed(path) > 0
    store.close()


def test_the_store_url_takes_the_check(tmp_path: Path) -> None:
    for query in ("check=off", "check=full", "synchronous=NORMAL&check=quick"):
        open_store(f"sqlite:///{tmp_path}/db-{query[:5]}.db?{query}").close()
    with pytest.raises(ValueError):
        open_store(f"sqlite:///{tmp_path}/x.db?check=sometimes")


def test_coordinator_serve_says_in_one_line_which_file_to_fix(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "coord"
    data.mkdir()
    store = SqliteStore(data / "coordinator.db")
    store.post(grant(1))
    store.close()
    Path(f"{data / 'coordinator.db'}-seq").write_text("99\n")  # more than it holds
    args = build_parser().parse_args(
        ["coordinator", "serve", "--data-dir", str(data), "--listen", "127.0.0.1:0"]
    )
    with caplog.at_level(logging.ERROR):
        assert args.func(args) == 1
    [record] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert record.exc_info is None and "coordinator.db-seq" in record.getMessage()
