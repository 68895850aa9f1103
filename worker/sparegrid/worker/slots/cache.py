"""Content-addressed input cache: data_dir/cache/sha256/<ab>/<digest>, verified before use.

A blob is downloaded into `<digest>.part` and renamed into place only once its SHA-256
matches, so a visible file is always a verified one. An interrupted download resumes from
the partial file's size; concurrent requests for one digest share one download.

With a size limit (`--cache-size`) the cache is trimmed when it is opened and before each
download makes room for it: partial files no download is writing go first, then verified
blobs, least recently used first; a blob a held task needs is never deleted. Partial files
count towards the limit, so inputs given up half way (a cancelled task, a coordinator that
went away) cannot fill the disk.
"""

import asyncio
import contextlib
import hashlib
import logging
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import BinaryIO

from sparegrid.wire import is_digest
from sparegrid.wire.clock import Clock
from sparegrid.worker.errors import BlobRejected, BlobUnavailable, DigestMismatch

Fetch = Callable[[str, int], AsyncIterator[bytes]]  # (digest, offset) -> chunks
_log = logging.getLogger("sparegrid.worker.slots.cache")
_HASH_CHUNK = 1 << 20
_PART = ".part"


def _is_part(path: Path) -> bool:
    return path.name.endswith(_PART)


def _hash_file(path: Path) -> "hashlib._Hash":
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest


def _append(f: BinaryIO, digest: "hashlib._Hash", chunk: bytes) -> None:
    f.write(chunk)
    digest.update(chunk)


def _finish(f: BinaryIO) -> None:
    f.flush()
    os.fsync(f.fileno())


class BlobCache:
    def __init__(
        self,
        root: Path,
        clock: Clock,
        retries: int = 4,
        retry_delay: float = 0.2,
        max_bytes: int | None = None,
    ) -> None:
        self.root = root / "sha256"
        self._clock = clock
        self._retries = retries
        self._retry_delay = retry_delay
        self._downloads: dict[str, asyncio.Task[Path]] = {}
        self._max_bytes = max_bytes
        self.in_use: Callable[[], set[str]] = set  # digests held tasks still need
        # made now: the executor's sandbox grants reading it only if it exists when the
        # executor starts, which may be before anything was downloaded (an echo task first)
        self.root.mkdir(parents=True, exist_ok=True)
        self.trim()  # a cache left over its limit (a smaller --cache-size than before)

    def _files(self) -> list[tuple[int, float, Path]]:
        """(size, last use, path) of every file in the cache, partial ones included."""
        found = []
        for path in self.root.glob("??/*"):
            with contextlib.suppress(FileNotFoundError):
                st = path.stat()
                found.append((st.st_size, st.st_mtime, path))
        return found

    def trim(self, room: int = 0) -> int:
        """Deletes files until the cache, and `room` bytes more, fit its size limit:
        partial files no download is writing first, then blobs by last use, never one a
        held task needs. Returns the bytes freed."""
        if self._max_bytes is None or not self.root.exists():
            return 0
        files = self._files()
        total = sum(size for size, _, _ in files)
        limit = self._max_bytes - room
        keep = self.in_use() | self._downloads.keys()
        freed = 0
        # partial files first (False sorts before True), each group oldest first
        for size, _, path in sorted(files, key=lambda f: (not _is_part(f[2]), f[1])):
            if total - freed <= limit:
                break
            if path.name.removesuffix(_PART) in keep:
                continue
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                freed += size
        if total - freed > limit:
            _log.warning(
                "input cache holds %d bytes%s, over its limit of %d: held tasks need them",
                total - freed,
                f" and needs {room} more" if room else "",
                self._max_bytes,
            )
        return freed

    def path_for(self, digest: str) -> Path:
        if not is_digest(digest):
            raise BlobRejected(f"{digest!r} is not a lowercase hex SHA-256 digest")
        return self.root / digest[:2] / digest

    async def get(self, digest: str, size: int, fetch: Fetch) -> Path:
        """The verified local file for `digest`, downloading it once if needed."""
        path = self.path_for(digest)
        if path.exists():
            with contextlib.suppress(OSError):
                os.utime(path)  # most recently used: trimmed last
            return path
        task = self._downloads.get(digest)
        if task is None:
            task = asyncio.create_task(self._download(digest, size, fetch, path))
            self._downloads[digest] = task
            task.add_done_callback(lambda t: self._download_done(digest, t))
        # A waiter that is cancelled must not cancel the download other waiters share.
        return await asyncio.shield(task)

    def _download_done(self, digest: str, task: asyncio.Task[Path]) -> None:
        self._downloads.pop(digest, None)
        if not task.cancelled():
            task.exception()  # retrieved here so an unawaited failure is not logged as lost

    async def _download(self, digest: str, size: int, fetch: Fetch, path: Path) -> Path:
        for attempt in range(1, self._retries + 1):
            try:
                return await self._download_once(digest, size, fetch, path)
            except BlobUnavailable as exc:
                if attempt == self._retries:
                    raise
                _log.info("download of %s interrupted (%s); resuming", digest, exc)
                await self._clock.sleep(self._retry_delay * 2 ** (attempt - 1))
        raise AssertionError("unreachable")

    async def _download_once(self, digest: str, size: int, fetch: Fetch, path: Path) -> Path:
        part = path.with_name(f"{digest}{_PART}")
        part.parent.mkdir(parents=True, exist_ok=True)
        offset = part.stat().st_size if part.exists() else 0
        if size and offset > size:
            part.unlink()
            offset = 0
        self.trim(room=max(0, size - offset))
        hasher = await asyncio.to_thread(_hash_file, part) if offset else hashlib.sha256()
        with part.open("ab") as f:
            async for chunk in fetch(digest, offset):
                await asyncio.to_thread(_append, f, hasher, chunk)
            await asyncio.to_thread(_finish, f)
        return self._publish(digest, size, hasher.hexdigest(), part, path)

    def _publish(self, digest: str, size: int, actual: str, part: Path, path: Path) -> Path:
        got = part.stat().st_size
        if actual != digest or (size and got != size):
            part.unlink()
            raise DigestMismatch(
                f"blob {digest} arrived as {got} bytes hashing to {actual}"
                + (f" (expected {size} bytes)" if size else "")
            )
        os.chmod(part, 0o444)  # executors read inputs; they must not change them
        os.replace(part, path)
        return path

    async def close(self) -> None:
        tasks = list(self._downloads.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
