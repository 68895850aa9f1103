"""The blob store's file I/O: O_DIRECT appends and reads at any alignment, with fallbacks,
and uploads that write and hash in threads, resume mid-block and never publish bad bytes."""

import errno
import fcntl
import hashlib
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sparegrid.coordinator import blobs
from sparegrid.coordinator.blobs import BlobStore, Reader
from sparegrid.coordinator.errors import CoordinatorError
from sparegrid.wire import fileio
from sparegrid.wire.fileio import ALIGN, STAGING, Appender

PIECES = [1, ALIGN - 1, ALIGN, 5000, STAGING + 123, 7, 3 << 20]


def _direct(fd: int) -> bool:
    return bool(fileio.O_DIRECT) and bool(fcntl.fcntl(fd, fcntl.F_GETFL) & fileio.O_DIRECT)


def _refuse_direct(monkeypatch: pytest.MonkeyPatch, name: str) -> list[int]:
    """Makes os.<name> fail with EINVAL on an O_DIRECT descriptor, as some filesystems do."""
    real: Callable[..., Any] = getattr(os, name)
    refused: list[int] = []

    def fake(fd: int, *args: Any) -> Any:
        if _direct(fd):
            refused.append(fd)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(fd, *args)

    monkeypatch.setattr(os, name, fake)
    return refused


def _append_all(path: Path, pieces: list[bytes]) -> None:
    appender = Appender(path)
    for piece in pieces:
        appender.write(piece)
    appender.close()
    appender.close()  # idempotent


def test_appender_keeps_every_byte_at_any_alignment(tmp_path: Path) -> None:
    pieces = [os.urandom(n) for n in PIECES]
    path = tmp_path / "f"
    _append_all(path, pieces)
    assert path.read_bytes() == b"".join(pieces)


def test_appender_resumes_mid_block(tmp_path: Path) -> None:
    path = tmp_path / "f"
    head = os.urandom(3 * ALIGN + 17)
    path.write_bytes(head)
    tail = [os.urandom(n) for n in (10, ALIGN * 2 + 5, 1 << 20)]
    _append_all(path, tail)
    assert path.read_bytes() == head + b"".join(tail)


def test_appender_sync_makes_the_tail_visible(tmp_path: Path) -> None:
    path = tmp_path / "f"
    appender = Appender(path)
    appender.write(b"x" * (ALIGN + 3))
    appender.sync()
    assert path.read_bytes() == b"x" * (ALIGN + 3)
    appender.close()


def test_appender_without_o_direct(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fileio, "O_DIRECT", 0)
    pieces = [os.urandom(n) for n in PIECES]
    _append_all(tmp_path / "f", pieces)
    assert (tmp_path / "f").read_bytes() == b"".join(pieces)


def test_appender_falls_back_when_direct_writes_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not fileio.O_DIRECT:
        pytest.skip("no O_DIRECT on this platform")
    refused = _refuse_direct(monkeypatch, "pwrite")
    pieces = [os.urandom(n) for n in PIECES]
    _append_all(tmp_path / "f", pieces)
    assert (tmp_path / "f").read_bytes() == b"".join(pieces)
    assert len(refused) <= 1


def _check_reads(path: Path, data: bytes) -> None:
    with Reader(path) as reader:
        for offset in (0, 1, ALIGN - 1, ALIGN, 5 * ALIGN + 3, len(data) - 1, len(data)):
            for n in (1, 100, ALIGN, 3 * ALIGN + 1, 4 << 20):
                assert reader.read_at(offset, n) == data[offset : offset + n]
        assert reader.read_at(len(data) + ALIGN, 10) == b""
        assert reader.read_at(0, STAGING + ALIGN) == data[:STAGING]  # capped at STAGING


def test_reader_reads_any_range(tmp_path: Path) -> None:
    data = os.urandom(STAGING + 5 * ALIGN + 11)
    (tmp_path / "f").write_bytes(data)
    _check_reads(tmp_path / "f", data)


def test_reader_falls_back_when_direct_reads_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not fileio.O_DIRECT:
        pytest.skip("no O_DIRECT on this platform")
    refused = _refuse_direct(monkeypatch, "preadv")
    data = os.urandom(3 * ALIGN + 11)
    (tmp_path / "f").write_bytes(data)
    _check_reads(tmp_path / "f", data)
    assert len(refused) == 1


def test_reader_concurrent_reads_then_close(tmp_path: Path) -> None:
    data = os.urandom(16 << 20)
    (tmp_path / "f").write_bytes(data)
    reader = Reader(tmp_path / "f")
    got: dict[int, bytes] = {}
    chunk = 1 << 20

    def read(offset: int) -> None:
        got[offset] = reader.read_at(offset, chunk)

    threads = [threading.Thread(target=read, args=(o,)) for o in range(0, len(data), chunk)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert b"".join(got[o] for o in sorted(got)) == data
    reader.close()
    assert reader.read_at(0, 10) == b""
    reader.close()


@pytest.fixture
def store(tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path / "blobs", max_blob_size=64 << 20)


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_upload_in_odd_chunks_publishes_the_blob(store: BlobStore) -> None:
    data = os.urandom(9 << 20 | 333)
    upload = store.begin(_digest(data), len(data), 0, "alice")
    futures = [upload.submit(data[i : i + 1_000_003]) for i in range(0, len(data), 1_000_003)]
    for future in futures:
        future.result()
    upload.finish()
    upload.close()
    assert upload.received == len(data)
    assert store.path(_digest(data)).read_bytes() == data
    assert store.partial_size(_digest(data), "alice") == 0


def test_closed_upload_keeps_its_bytes_and_resumes_mid_block(store: BlobStore) -> None:
    data = os.urandom(3 << 20)
    digest = _digest(data)
    cut = 2 * ALIGN + 1001
    first = store.begin(digest, len(data), 0, "alice")
    first.write(data[:1000])
    first.write(data[1000:cut])
    first.close()
    with pytest.raises(CoordinatorError) as info:
        first.submit(b"more")
    assert info.value.code == "UPLOAD_CLOSED"
    assert store.partial_size(digest, "alice") == cut
    with pytest.raises(CoordinatorError) as info:
        store.begin(digest, len(data), 0, "alice")
    assert info.value.code == "BAD_OFFSET"
    second = store.begin(digest, len(data), cut, "alice")
    second.write(data[cut:])
    second.finish()
    assert store.path(digest).read_bytes() == data


def test_short_upload_is_incomplete_and_kept(store: BlobStore) -> None:
    data = os.urandom(100_000)
    upload = store.begin(_digest(data), len(data), 0, "alice")
    upload.write(data[:60_001])
    with pytest.raises(CoordinatorError) as info:
        upload.finish()
    assert info.value.code == "UPLOAD_INCOMPLETE"
    assert store.partial_size(_digest(data), "alice") == 60_001


def test_oversized_and_wrong_uploads_are_refused(store: BlobStore) -> None:
    data = os.urandom(10_000)
    upload = store.begin(_digest(data), len(data), 0, "alice")
    upload.write(data[:6000])
    with pytest.raises(CoordinatorError) as info:
        upload.submit(data[:6000])
    assert info.value.code == "SIZE_MISMATCH"
    assert store.partial_size(_digest(data), "alice") == 6000
    wrong = "0" * 64
    upload = store.begin(wrong, len(data), 0, "bob")
    upload.write(data)
    with pytest.raises(CoordinatorError) as info:
        upload.finish()
    assert info.value.code == "DIGEST_MISMATCH"
    assert store.size(wrong) is None and store.partial_size(wrong, "bob") == 0


def test_failed_write_publishes_nothing(store: BlobStore, monkeypatch: pytest.MonkeyPatch) -> None:
    data = os.urandom(3 << 20)
    upload = store.begin(_digest(data), len(data), 0, "alice")
    real = Appender.write
    calls = 0

    def flaky(self: Appender, chunk: bytes) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(self, chunk)

    monkeypatch.setattr(Appender, "write", flaky)
    futures = [upload.submit(data[i : i + (1 << 20)]) for i in range(0, len(data), 1 << 20)]
    with pytest.raises(OSError):
        futures[1].result()
    with pytest.raises(CoordinatorError):
        futures[2].result()
    with pytest.raises(CoordinatorError) as info:
        upload.finish()
    assert info.value.code == "UPLOAD_CLOSED"
    upload.close()
    assert store.size(_digest(data)) is None


def test_keep_freed_memory_is_harmless() -> None:
    blobs.keep_freed_memory()
    blobs.keep_freed_memory()
    assert len(bytes(40 << 20)) == 40 << 20
