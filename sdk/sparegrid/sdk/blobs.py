"""Blob transfer logic shared by both clients: hashing, upload requests, download sinks.

An upload hashes its source first, asks StatBlob whether the coordinator already has it
(then nothing is sent) or keeps part of it (then it resumes from there), and streams a
header followed by chunks. A download appends to a partial file named after the digest,
resumes from its length after a failure, and renames it into place once the digest holds.

Big transfers are CPU-bound on small machines, so the work is spread over threads (hashlib
and file I/O release the GIL): a download writes and hashes one chunk while the next is
received, and writes its file with O_DIRECT where the filesystem allows it, since filling
the page cache with a gigabyte cost more than the transfer on the 2-core development VM.
"""

import asyncio
import contextlib
import hashlib
import mmap
import os
from collections import deque
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from sparegrid.sdk.errors import InvalidArgumentError, VerificationError
from sparegrid.v1 import blob_pb2
from sparegrid.wire import sha256_hex
from sparegrid.wire.fileio import O_DIRECT, Appender

DEFAULT_CHUNK_SIZE = 4 * 1024 * 1024
HASH_BLOCK = 1024 * 1024
MAP_HASH_BLOCK = 64 * 1024 * 1024  # hashing a mapped file in big slices: ~10% faster
OFFLOAD_MIN = 256 * 1024  # smaller chunks are written and hashed inline
SINK_AHEAD = 3  # chunks a download receives while earlier ones are written
Progress = Callable[[int, int], None]
"""Called with (bytes done, bytes total) as a transfer advances."""

BlobInput = str | os.PathLike[str] | bytes | bytearray | memoryview


def hash_file(path: Path) -> tuple[str, int]:
    """SHA-256 (lowercase hex) and size of a file: mapped when it can be, else read."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        size = os.fstat(f.fileno()).st_size
        try:
            mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else None
        except (OSError, ValueError):  # not a regular file, or not mappable
            mapped = None
        if mapped is None:
            size = 0
            while block := f.read(HASH_BLOCK):
                digest.update(block)
                size += len(block)
            return digest.hexdigest(), size
        with mapped, memoryview(mapped) as view:
            size = len(view)
            for start in range(0, size, MAP_HASH_BLOCK):
                digest.update(view[start : start + MAP_HASH_BLOCK])
        return digest.hexdigest(), size


@dataclass(frozen=True)
class BlobSource:
    """What to upload: bytes in memory or a file, with its digest and size."""

    digest: str
    size: int
    path: Path | None = None
    data: bytes | None = None

    @classmethod
    def open(cls, source: BlobInput) -> "BlobSource":
        if isinstance(source, bytes | bytearray | memoryview):
            data = bytes(source)
            return cls(digest=sha256_hex(data), size=len(data), data=data)
        path = Path(source)
        if not path.is_file():
            what = "is a directory, not a file" if path.is_dir() else "does not exist"
            raise InvalidArgumentError("BAD_INPUT", f"cannot upload {path}: it {what}")
        digest, size = hash_file(path)
        return cls(digest=digest, size=size, path=path)

    def chunks(self, offset: int, chunk_size: int) -> Generator[bytes, None, None]:
        if self.data is not None:
            for start in range(offset, self.size, chunk_size):
                yield self.data[start : start + chunk_size]
            return
        assert self.path is not None
        with self.path.open("rb") as f:
            f.seek(offset)
            while chunk := f.read(chunk_size):
                yield chunk


def resume_offset(stat: blob_pb2.StatBlobResponse, size: int) -> int | None:
    """Where an upload starts: None when the blob is stored already (nothing to send)."""
    if stat.exists:
        return None
    return stat.partial_size if 0 < stat.partial_size <= size else 0


def upload_requests(
    source: BlobSource, offset: int, chunk_size: int, on_progress: Progress | None = None
) -> Iterator[blob_pb2.UploadBlobRequest]:
    """The header, then the chunks from `offset` on."""
    parts = _requests(source, offset, chunk_size)
    done = offset
    try:
        for request, size in parts:
            yield request
            done += size
            if on_progress:
                on_progress(done, source.size)
    finally:
        parts.close()


async def aupload_requests(
    source: BlobSource, offset: int, chunk_size: int, on_progress: Progress | None = None
) -> AsyncIterator[blob_pb2.UploadBlobRequest]:
    """`upload_requests` for grpc.aio: reads in threads, reports progress on the loop."""
    parts = _requests(source, offset, chunk_size)
    done = offset
    try:
        while (part := await asyncio.to_thread(next, parts, None)) is not None:
            yield part[0]
            done += part[1]
            if on_progress:
                on_progress(done, source.size)
    finally:
        await asyncio.to_thread(parts.close)


Part = tuple[blob_pb2.UploadBlobRequest, int]  # a request and its chunk's length


def _requests(source: BlobSource, offset: int, chunk_size: int) -> Generator[Part, None, None]:
    """The header, then the chunks, each with its length (reading it back would copy it).

    A file's next chunk is read in a thread while gRPC sends the current one: gRPC asks
    for the next message only once the last is sent, so reading in between stalled it.
    """
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    header = blob_pb2.BlobHeader(digest=source.digest, size=source.size, offset=offset)
    yield blob_pb2.UploadBlobRequest(header=header), 0
    chunks = source.chunks(offset, chunk_size)
    with ThreadPoolExecutor(1, thread_name_prefix="sparegrid-upload") as reader:
        try:
            ahead = reader.submit(_next_part, chunks)
            while (part := ahead.result()) is not None:
                ahead = reader.submit(_next_part, chunks)
                yield part
        finally:
            reader.submit(chunks.close)


def _next_part(chunks: Iterator[bytes]) -> Part | None:
    chunk = next(chunks, None)
    return None if chunk is None else (blob_pb2.UploadBlobRequest(chunk=chunk), len(chunk))


class Sink:
    """Receives a blob's chunks, hashing them; `offset` is where a resumed download starts.

    Big chunks are written in one thread and hashed in another (file I/O and hashlib
    release the GIL) while the caller receives the next ones, up to SINK_AHEAD of them.
    `offset` counts the chunks accepted, which are all written, in order, before any later
    one. A failure to write surfaces at a later `accept` or at `finish`.
    """

    def __init__(self, digest: str, on_progress: Progress | None = None) -> None:
        self.digest = digest
        self.offset = 0
        self.size = 0
        self._hash = hashlib.sha256()
        self._on_progress = on_progress
        self._writer: ThreadPoolExecutor | None = None
        self._hasher: ThreadPoolExecutor | None = None
        self._pending: deque[Future[None]] = deque()

    def accept(self, response: blob_pb2.DownloadBlobResponse) -> None:
        chunk = self._take(response)
        if chunk:
            while len(self._pending) >= SINK_AHEAD:
                self._pending.popleft().result()
            self._consume(chunk)
        self._progress()

    async def accept_async(self, response: blob_pb2.DownloadBlobResponse) -> None:
        """`accept` for an event loop: waits for earlier chunks without blocking it."""
        chunk = self._take(response)
        if chunk:
            while len(self._pending) >= SINK_AHEAD:
                await asyncio.wrap_future(self._pending.popleft())
            self._consume(chunk)
        self._progress()

    def _take(self, response: blob_pb2.DownloadBlobResponse) -> bytes:
        if response.size:
            self.size = response.size
        return response.chunk  # each read of a bytes field copies it: read it once

    def _consume(self, chunk: bytes) -> None:
        if len(chunk) < OFFLOAD_MIN:
            self._wait()
            self._write(chunk)
            self._hash.update(chunk)
        else:
            if self._writer is None or self._hasher is None:
                self._writer = ThreadPoolExecutor(1, thread_name_prefix="sparegrid-write")
                self._hasher = ThreadPoolExecutor(1, thread_name_prefix="sparegrid-hash")
            hashed = self._hasher.submit(self._hash.update, chunk)
            self._pending.append(self._writer.submit(_write_then_wait, self._write, chunk, hashed))
        self.offset += len(chunk)

    def _progress(self) -> None:
        if self._on_progress:
            self._on_progress(self.offset, self.size)

    def _wait(self) -> None:
        """Waits until every accepted chunk is written and hashed; raises their errors."""
        while self._pending:
            self._pending.popleft().result()

    def _stop(self) -> None:
        """Waits for the chunks in progress and ends the threads; idempotent."""
        try:
            self._wait()
        finally:
            for pool in (self._writer, self._hasher):
                if pool is not None:
                    pool.shutdown()
            self._writer = self._hasher = None

    def _write(self, chunk: bytes) -> None:
        raise NotImplementedError

    def _check(self) -> None:
        got = self._hash.hexdigest()
        if got != self.digest:
            raise VerificationError(
                f"downloaded blob has digest {got}, expected {self.digest}", "DIGEST_MISMATCH"
            )


def _write_then_wait(write: Callable[[bytes], None], chunk: bytes, hashed: Future[None]) -> None:
    write(chunk)
    hashed.result()


class MemorySink(Sink):
    def __init__(self, digest: str, on_progress: Progress | None = None) -> None:
        super().__init__(digest, on_progress)
        self._data = bytearray()

    def _write(self, chunk: bytes) -> None:
        self._data += chunk

    def finish(self) -> bytes:
        self._stop()
        self._check()
        return bytes(self._data)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._stop()


class FileSink(Sink):
    """Writes to `.<name>.<digest>.partial` beside `dest`; renames it once verified."""

    def __init__(self, digest: str, dest: Path, on_progress: Progress | None = None) -> None:
        super().__init__(digest, on_progress)
        self.dest = dest
        dest.parent.mkdir(parents=True, exist_ok=True)
        self.partial = dest.with_name(f".{dest.name}.{digest[:16]}.partial")
        self._resume()
        # Appender needs os.pwrite and gains only with O_DIRECT; elsewhere a plain file
        self._file: _Output = Appender(self.partial) if O_DIRECT else self.partial.open("ab")

    def _resume(self) -> None:
        with contextlib.suppress(FileNotFoundError), self.partial.open("rb") as f:
            while block := f.read(HASH_BLOCK):
                self._hash.update(block)
                self.offset += len(block)

    def _write(self, chunk: bytes) -> None:
        self._file.write(chunk)

    def finish(self) -> Path:
        self.close()
        try:
            self._check()
        except VerificationError:
            self.partial.unlink(missing_ok=True)
            raise
        os.replace(self.partial, self.dest)
        return self.dest

    def close(self) -> None:
        """Leaves the partial file (every accepted byte) for a later resume."""
        try:
            self._stop()
        finally:
            self._file.close()


class _Output(Protocol):
    def write(self, data: bytes, /) -> object: ...

    def close(self) -> None: ...
