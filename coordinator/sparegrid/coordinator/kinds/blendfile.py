"""Checking that an upload is a whole .blend file, without Blender and without running it.

A .blend is a header, then blocks (a code, a length, ...) up to an "ENDB" block. Blender
4.x and older write a 12-byte header ("BLENDER" + pointer size + endianness + version) and
small block headers; Blender 5 writes "BLENDER17-01v0500" and 32-byte block headers. Blender
compresses the file with zstd by default (gzip before 3.0). Walking every block header up to
ENDB catches a truncated or corrupt file at submit instead of on a volunteer's machine.

The walk also reads every block for the type names of nodes that import files from disk
(`FILE_READING_NODES`: a node stores its type as a NUL-terminated name), and refuses the
file if one is there. Without Blender that is all it can tell: whether an image, a cache
or a library is packed, or a path is in use, needs the file's DNA, so those are left to
the SDK and the worker, which check them with Blender (`sparegrid.wire.blendrefs`).
"""

import gzip
import os
import re
import struct
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Protocol

import zstandard

from sparegrid.wire.blendrefs import FILE_READING_NODES

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
GZIP_MAGIC = b"\x1f\x8b"
_MAX_BLOCKS = 50_000_000
# a compressed .blend inflates a few times (packed images hardly at all); a bomb far more
MAX_INFLATION = 200
MIN_INFLATION_LIMIT = 256 << 20
_NODE_NAMES = re.compile(
    b"(" + b"|".join(n.encode() for n in sorted(FILE_READING_NODES)) + b")\x00"
)
_OVERLAP = max(len(n) for n in FILE_READING_NODES) + 1


class BlendError(Exception):
    """The file is not a .blend file Blender could open; the message says why."""


def blend_version(path: Path) -> str:
    """The "major.minor" of the Blender that wrote the file; raises BlendError if it is not
    a complete .blend file."""
    with _opened(path) as f:
        head = f.read(17)
        if head.startswith(b"BLENDER17-01"):
            version = head[13:17].decode("ascii", "replace")
            walk: Callable[[_Reader], None] = _walk_v1
            if head[12:13] != b"v":
                raise BlendError("it is a big-endian Blender 5 file, which Blender cannot read")
        elif head.startswith(b"BLENDER") and len(head) >= 12:
            version, walk = _legacy_header(head)
            f = _Prefixed(head[12:], f)
        else:
            raise BlendError(f"it is not a .blend file (it starts with {head[:12]!r})")
        if not version.isdigit():
            raise BlendError(f"its header names no Blender version ({head[:17]!r})")
        found: set[str] = set()
        walk(_Scanned(f, found))
    if found:
        raise BlendError(
            f"it uses nodes that read files from the disk of the machine rendering it "
            f"({', '.join(sorted(found))}), which workers refuse; realize the imported "
            "geometry into the scene's own data instead"
        )
    number = int(version)
    return f"{number // 100}.{number % 100}"


def _legacy_header(head: bytes) -> tuple[str, Callable[["_Reader"], None]]:
    pointer = {b"_": 4, b"-": 8}.get(head[7:8])
    order = {b"v": "<", b"V": ">"}.get(head[8:9])
    if pointer is None or order is None:
        raise BlendError(f"its header {head[:12]!r} is not one Blender writes")
    fmt = struct.Struct(f"{order}4si{'I' if pointer == 4 else 'Q'}ii")

    def walk(f: "_Reader") -> None:
        _walk(f, fmt, length_index=1)

    return head[9:12].decode("ascii", "replace"), walk


def _walk_v1(f: "_Reader") -> None:
    _walk(f, struct.Struct("<4siQqq"), length_index=3)


def _walk(f: "_Reader", fmt: struct.Struct, length_index: int) -> None:
    for blocks in range(_MAX_BLOCKS):
        raw = f.read(fmt.size)
        if len(raw) < fmt.size:
            raise BlendError(f"it is truncated or corrupt: it ends after {blocks} blocks, no ENDB")
        fields = fmt.unpack(raw)
        code, length = fields[0], fields[length_index]
        if code == b"ENDB":
            return
        if length < 0 or not code[:1].isalnum():
            raise BlendError(f"it is corrupt: block {blocks} has code {code!r}, length {length}")
        if f.skip(length) < length:
            raise BlendError(f"it is truncated: block {blocks} ({code!r}) is cut short")
    raise BlendError(f"it has more than {_MAX_BLOCKS} blocks")


class _Reader:
    def read(self, n: int) -> bytes:
        raise NotImplementedError

    def skip(self, n: int) -> int:
        done = 0
        while done < n:
            chunk = self.read(min(n - done, 1 << 20))
            if not chunk:
                break
            done += len(chunk)
        return done


class _Scanned(_Reader):
    """Reads through `inner`, and skips by reading, noting the file-reading node type names
    in what goes past (block payloads, where nodes are)."""

    def __init__(self, inner: _Reader, found: set[str]) -> None:
        self._inner = inner
        self._found = found

    def read(self, n: int) -> bytes:
        return self._inner.read(n)

    def skip(self, n: int) -> int:
        done, tail = 0, b""
        while done < n:
            chunk = self._inner.read(min(n - done, 1 << 20))
            if not chunk:
                break
            done += len(chunk)
            window = tail + chunk
            self._found.update(m.group(1).decode() for m in _NODE_NAMES.finditer(window))
            tail = window[-_OVERLAP:]
        return done


class _Readable(Protocol):
    def read(self, n: int, /) -> bytes: ...


class _Stream(_Reader):
    """A decompressed stream, refused once it inflates past `limit` bytes: walking a
    decompression bomb would take the coordinator hours."""

    def __init__(self, f: _Readable, limit: int | None = None) -> None:
        self._f = f
        self._limit = limit
        self._read = 0

    def read(self, n: int) -> bytes:
        try:
            data = self._f.read(n)
        except (zstandard.ZstdError, OSError, EOFError, zlib.error) as exc:
            raise BlendError(f"its compressed data is corrupt ({exc})") from None
        self._read += len(data)
        if self._limit is not None and self._read > self._limit:
            raise BlendError(
                f"it inflates to more than {MAX_INFLATION} times its size (a decompression bomb?)"
            )
        return data


class _Plain(_Stream):
    def __init__(self, f: BinaryIO) -> None:
        super().__init__(f)
        self._file = f

    def skip(self, n: int) -> int:
        here = self._file.tell()
        end = self._file.seek(0, 2)
        self._file.seek(min(here + n, end))
        return min(n, end - here)


class _Prefixed(_Reader):
    def __init__(self, prefix: bytes, inner: "_Reader") -> None:
        self._prefix = prefix
        self._inner = inner

    def read(self, n: int) -> bytes:
        if self._prefix:
            out, self._prefix = self._prefix[:n], self._prefix[n:]
            return out + (self._inner.read(n - len(out)) if n > len(out) else b"")
        return self._inner.read(n)

    def skip(self, n: int) -> int:
        if self._prefix:
            return super().skip(n)
        return self._inner.skip(n)


@contextmanager
def _opened(path: Path) -> Iterator[_Reader]:
    with path.open("rb") as raw:
        magic = raw.read(4)
        raw.seek(0)
        limit = max(MIN_INFLATION_LIMIT, MAX_INFLATION * os.fstat(raw.fileno()).st_size)
        if magic == ZSTD_MAGIC:
            with zstandard.ZstdDecompressor().stream_reader(raw) as z:
                yield _Stream(z, limit)
        elif magic[:2] == GZIP_MAGIC:
            with gzip.GzipFile(fileobj=raw) as g:
                yield _Stream(g, limit)
        else:
            yield _Plain(raw)
