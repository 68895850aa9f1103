"""The input cache stays within --cache-size: partial downloads count and go first, room
is made before a download, a cache left over its limit is trimmed when opened, and a blob a
held task needs is never deleted."""

import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sparegrid.wire.clock import SystemClock
from sparegrid.worker.errors import BlobUnavailable
from sparegrid.worker.slots.cache import BlobCache


def _put(cache: BlobCache, digest: str, size: int, age: int, part: bool = False) -> Path:
    path = cache.path_for(digest)
    if part:
        path = path.with_name(f"{digest}.part")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    os.utime(path, (1000 + age, 1000 + age))
    return path


def _cached_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in (root / "cache" / "sha256").glob("??/*"))


def test_partial_downloads_count_and_are_trimmed_first(tmp_path: Path) -> None:
    """A download given up half way (its task cancelled, its coordinator gone) left a
    .part file that no limit counted and nothing deleted: inputs given up at 15 GiB, one
    after another, filled the volunteer's disk."""
    cache = BlobCache(tmp_path / "cache", SystemClock(), max_bytes=3000)
    blobs = [_put(cache, f"{i:x}" * 64, 1000, age=i) for i in range(1, 3)]
    stale = _put(cache, "a" * 64, 1500, age=5, part=True)
    assert cache.trim() == 1500
    assert not stale.exists() and all(p.exists() for p in blobs)


def test_a_partial_download_a_held_task_needs_is_kept(tmp_path: Path) -> None:
    cache = BlobCache(tmp_path / "cache", SystemClock(), max_bytes=1000)
    needed = _put(cache, "a" * 64, 1500, age=1, part=True)
    cache.in_use = lambda: {"a" * 64}
    assert cache.trim() == 0 and needed.exists()


def test_a_cache_over_its_limit_is_trimmed_when_opened(tmp_path: Path) -> None:
    first = BlobCache(tmp_path / "cache", SystemClock())
    paths = [_put(first, f"{i:x}" * 64, 1000, age=i) for i in range(1, 6)]
    BlobCache(tmp_path / "cache", SystemClock(), max_bytes=2500)  # a smaller --cache-size
    assert [p.exists() for p in paths] == [False, False, False, True, True]


async def test_room_is_made_before_a_download(tmp_path: Path) -> None:
    """The cache was trimmed only after a download was published, so it held the new
    blob on top of a full cache meanwhile (16 GiB over the limit for a 16 GiB input)."""
    cache = BlobCache(tmp_path / "cache", SystemClock(), max_bytes=3000)
    old = [_put(cache, f"{i:x}" * 64, 1000, age=i) for i in range(1, 4)]
    data = os.urandom(1500)
    digest = hashlib.sha256(data).hexdigest()
    seen: list[int] = []

    async def fetch(_: str, offset: int) -> AsyncIterator[bytes]:
        for start in range(offset, len(data), 500):
            seen.append(_cached_bytes(tmp_path))
            yield data[start : start + 500]

    path = await cache.get(digest, len(data), fetch)
    assert path.read_bytes() == data
    assert max(seen) + 500 <= 3000 and _cached_bytes(tmp_path) <= 3000
    assert [p.exists() for p in old] == [False, False, True]


async def test_an_interrupted_download_keeps_its_part_for_the_retry(tmp_path: Path) -> None:
    """A trim before the retry must not delete the part the retry resumes from."""
    cache = BlobCache(tmp_path / "cache", SystemClock(), retry_delay=0.0, max_bytes=4000)
    data = os.urandom(3000)
    digest = hashlib.sha256(data).hexdigest()
    offsets: list[int] = []

    async def fetch(_: str, offset: int) -> AsyncIterator[bytes]:
        offsets.append(offset)
        for start in range(offset, len(data), 1000):
            if len(offsets) == 1 and start >= 2000:
                raise BlobUnavailable("connection dropped")
            yield data[start : start + 1000]

    assert (await cache.get(digest, len(data), fetch)).read_bytes() == data
    assert offsets == [0, 2000]


@pytest.mark.parametrize("limit", [None, 10_000])
async def test_a_cache_hit_is_the_most_recently_used(tmp_path: Path, limit: int | None) -> None:
    cache = BlobCache(tmp_path / "cache", SystemClock(), max_bytes=limit)
    data = b"y" * 100
    digest = hashlib.sha256(data).hexdigest()
    path = _put(cache, digest, 0, age=0)
    path.write_bytes(data)
    os.utime(path, (1000, 1000))

    async def fetch(_: str, offset: int) -> AsyncIterator[bytes]:
        raise AssertionError("a cached blob is not downloaded")
        yield b""

    assert await cache.get(digest, len(data), fetch) == path
    assert path.stat().st_mtime > 1000
