"""Blob transfer logic shared by both clients: hashing, upload requests, download sinks.

An upload hashes its source first, asks StatBlob whether the coordinator already has it
(then nothing is sent) or keeps part of it (then it resumes from there), and streams a
header followed by chunks. A download appends to a partial file named after the digest,
resumes from its length after a failure, and renames it into place once the digest holds.
"""

import contextlib
import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from sparegrid.sdk.errors import VerificationError
from sparegrid.v1 import blob_pb2
from sparegrid.wire import sha256_hex

DEFAULT_CHUNK_SIZE = 4 * 1024 * 1024
HASH_BLOCK = 1024 * 1024
Progress = Callable[[int, int], None]
"""Called with (bytes done, bytes total) as a transfer advances."""

BlobInput = str | os.PathLike[str] | bytes | bytearray | memoryview


def hash_file(path: Path) -> tuple[str, int]:
    """SHA-256 (lowercase hex) and size of a file, read in blocks."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while block := f.read(HASH_BLOCK):
            digest.update(block)
            size += len(block)
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
        digest, size = hash_file(path)
        return cls(digest=digest, size=size, path=path)

    def chunks(self, offset: int, chunk_size: int) -> Iterator[bytes]:
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
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    header = blob_pb2.BlobHeader(digest=source.digest, size=source.size, offset=offset)
    yield blob_pb2.UploadBlobRequest(header=header)
    done = offset
    if on_progress:
        on_progress(done, source.size)
    for chunk in source.chunks(offset, chunk_size):
        yield blob_pb2.UploadBlobRequest(chunk=chunk)
        done += len(chunk)
        if on_progress:
            on_progress(done, source.size)


class Sink:
    """Receives a blob's chunks, hashing them; `offset` is where a resumed download starts."""

    def __init__(self, digest: str, on_progress: Progress | None = None) -> None:
        self.digest = digest
        self.offset = 0
        self.size = 0
        self._hash = hashlib.sha256()
        self._on_progress = on_progress

    def accept(self, response: blob_pb2.DownloadBlobResponse) -> None:
        if response.size:
            self.size = response.size
        chunk = response.chunk  # each read of a bytes field copies it: read it once
        if chunk:
            self._write(chunk)
            self._hash.update(chunk)
            self.offset += len(chunk)
        if self._on_progress:
            self._on_progress(self.offset, self.size)

    def _write(self, chunk: bytes) -> None:
        raise NotImplementedError

    def _check(self) -> None:
        got = self._hash.hexdigest()
        if got != self.digest:
            raise VerificationError(
                f"downloaded blob has digest {got}, expected {self.digest}", "DIGEST_MISMATCH"
            )


class MemorySink(Sink):
    def __init__(self, digest: str, on_progress: Progress | None = None) -> None:
        super().__init__(digest, on_progress)
        self._data = bytearray()

    def _write(self, chunk: bytes) -> None:
        self._data += chunk

    def finish(self) -> bytes:
        self._check()
        return bytes(self._data)


class FileSink(Sink):
    """Writes to `.<name>.<digest>.partial` beside `dest`; renames it once verified."""

    def __init__(self, digest: str, dest: Path, on_progress: Progress | None = None) -> None:
        super().__init__(digest, on_progress)
        self.dest = dest
        dest.parent.mkdir(parents=True, exist_ok=True)
        self.partial = dest.with_name(f".{dest.name}.{digest[:16]}.partial")
        self._file: BinaryIO = self.partial.open("a+b")
        self._resume()

    def _resume(self) -> None:
        self._file.seek(0)
        while block := self._file.read(HASH_BLOCK):
            self._hash.update(block)
            self.offset += len(block)

    def _write(self, chunk: bytes) -> None:
        self._file.write(chunk)

    def finish(self) -> Path:
        self._file.close()
        try:
            self._check()
        except VerificationError:
            self.partial.unlink(missing_ok=True)
            raise
        os.replace(self.partial, self.dest)
        return self.dest

    def close(self) -> None:
        """Leaves the partial file for a later resume."""
        with contextlib.suppress(OSError):
            self._file.close()
