"""The SDK's transfer machinery: hashing, read-ahead upload requests, threaded sinks that
write with O_DIRECT (or fall back) and resume mid-block."""

import asyncio
import errno
import hashlib
import os
import threading
from pathlib import Path

import pytest

from sparegrid.sdk import AsyncClient, Client, VerificationError, blobs
from sparegrid.sdk.blobs import (
    OFFLOAD_MIN,
    BlobSource,
    FileSink,
    MemorySink,
    aupload_requests,
    hash_file,
    upload_requests,
)
from sparegrid.sdk.retry import RetryPolicy
from sparegrid.sdk.testing import InMemoryBlobService, serve_blobs
from sparegrid.v1 import blob_pb2
from sparegrid.wire.fileio import ALIGN, STAGING

FAST = RetryPolicy(initial_backoff=0.01, max_backoff=0.01)
DATA = os.urandom(5 * OFFLOAD_MIN + 12_345)
DIGEST = hashlib.sha256(DATA).hexdigest()
PIECES = [1, ALIGN - 1, OFFLOAD_MIN, 3 * OFFLOAD_MIN + 5, STAGING + 77, 5000]


def _responses(data: bytes, piece: int) -> list[blob_pb2.DownloadBlobResponse]:
    return [
        blob_pb2.DownloadBlobResponse(size=len(data) if i == 0 else 0, chunk=data[i : i + piece])
        for i in range(0, len(data), piece)
    ]


def test_hash_file_mapped_read_and_empty(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(blobs, "MAP_HASH_BLOCK", 100_000)  # several slices
    path = tmp_path / "f"
    path.write_bytes(DATA)
    assert hash_file(path) == (DIGEST, len(DATA))
    path.write_bytes(b"")
    assert hash_file(path) == (hashlib.sha256(b"").hexdigest(), 0)


def test_upload_requests_read_ahead(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(DATA)
    source = BlobSource.open(path)
    progress: list[int] = []
    requests = list(upload_requests(source, 1000, 300_000, lambda d, t: progress.append(d)))
    assert requests[0].header.offset == 1000 and requests[0].header.digest == DIGEST
    assert b"".join(r.chunk for r in requests[1:]) == DATA[1000:]
    assert progress[0] == 1000 and progress[-1] == len(DATA)
    assert len(progress) == len(requests)
    with pytest.raises(ValueError):
        next(upload_requests(source, 0, 0))


def test_upload_requests_stopped_early_end_their_thread(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(DATA)
    before = threading.active_count()
    requests = upload_requests(BlobSource.open(path), 0, 100_000)
    next(requests), next(requests)
    requests.close()
    assert threading.active_count() == before


async def test_async_upload_requests(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(DATA)
    source = await asyncio.to_thread(BlobSource.open, path)
    progress: list[int] = []
    requests = [
        r async for r in aupload_requests(source, 0, 400_000, lambda d, t: progress.append(d))
    ]
    assert b"".join(r.chunk for r in requests[1:]) == DATA
    assert progress == [min(len(DATA), i * 400_000) for i in range(len(requests))]


@pytest.mark.parametrize("piece", [ALIGN + 1, OFFLOAD_MIN, 1 << 20])
def test_file_sink_in_threads(tmp_path: Path, piece: int) -> None:
    dest = tmp_path / "out" / "blob.bin"
    sink = FileSink(DIGEST, dest)
    for response in _responses(DATA, piece):
        sink.accept(response)
    assert sink.offset == len(DATA) and sink.size == len(DATA)
    sink.close()
    assert sink.finish() == dest
    assert dest.read_bytes() == DATA
    assert [p.name for p in dest.parent.iterdir()] == ["blob.bin"]


async def test_file_sink_async_resumes_mid_block(tmp_path: Path) -> None:
    dest = tmp_path / "blob.bin"
    first = FileSink(DIGEST, dest)
    cut = 2 * OFFLOAD_MIN + 777
    first.accept(blob_pb2.DownloadBlobResponse(size=len(DATA), chunk=DATA[:cut]))
    first.close()
    assert first.partial.stat().st_size == cut
    second = FileSink(DIGEST, dest)
    assert second.offset == cut
    for response in _responses(DATA[cut:], OFFLOAD_MIN + 3):
        await second.accept_async(response)
    second.close()
    second.finish()
    assert dest.read_bytes() == DATA


def test_file_sink_mismatch_removes_the_partial(tmp_path: Path) -> None:
    sink = FileSink("0" * 64, tmp_path / "blob.bin")
    for response in _responses(DATA, 1 << 20):
        sink.accept(response)
    with pytest.raises(VerificationError):
        sink.finish()
    assert list(tmp_path.iterdir()) == []


def test_memory_sink_in_threads() -> None:
    sink = MemorySink(DIGEST)
    for response in _responses(DATA, OFFLOAD_MIN + 1):
        sink.accept(response)
    assert sink.finish() == DATA


def test_a_failed_write_surfaces() -> None:
    class Broken(MemorySink):
        def _write(self, chunk: bytes) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

    sink = Broken(DIGEST)
    with pytest.raises(OSError):
        for response in _responses(DATA, OFFLOAD_MIN):
            sink.accept(response)
        sink.finish()
    sink.close()


async def test_clients_move_a_file_in_big_chunks(tmp_path: Path) -> None:
    service = InMemoryBlobService()
    server, address = await serve_blobs(service)
    try:
        src = tmp_path / "src.bin"
        src.write_bytes(DATA)
        async with AsyncClient(address, "k", retry=FAST, chunk_size=OFFLOAD_MIN) as client:
            assert await client.upload(src) == DIGEST
            assert await client.download(DIGEST, tmp_path / "a.bin") == tmp_path / "a.bin"
        assert service.blobs[DIGEST] == DATA
        assert (tmp_path / "a.bin").read_bytes() == DATA

        def sync() -> bytes:
            with Client(address, "k", retry=FAST, chunk_size=300_001) as client:
                assert client.upload(src) == DIGEST  # deduplicated
                client.download(DIGEST, tmp_path / "b.bin")
            return (tmp_path / "b.bin").read_bytes()

        assert await asyncio.to_thread(sync) == DATA
        assert service.bytes_received == len(DATA)
    finally:
        await server.stop(None)


def test_file_sink_without_o_direct(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(blobs, "O_DIRECT", 0)  # as on macOS and Windows: a plain file
    dest = tmp_path / "blob.bin"
    sink = FileSink(DIGEST, dest)
    for response in _responses(DATA, OFFLOAD_MIN + 1):
        sink.accept(response)
    sink.close()
    sink.finish()
    assert dest.read_bytes() == DATA
