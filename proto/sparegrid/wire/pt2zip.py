"""The zip layer of a `torch.export` archive (.pt2), read with the standard library only.

`sparegrid.wire.pt2` checks what the archive holds; this module checks the archive itself
before any entry is read: each name once, compared without case (torch's zip reader finds
an entry by a case-insensitive binary search, Python's takes the last copy: a repeated name
would let one copy be checked and another loaded), plain files only (no symbolic links), no
name that escapes the archive, no size it declares beyond the bytes the file holds, no
entries sharing bytes and no implausible compression (zip bombs). A file that is a pickle
(`torch.save`) is told apart by its first bytes, never unpickled.
"""

import stat
import zipfile
import zlib
from itertools import pairwise
from pathlib import Path

MAX_ARCHIVE_ENTRIES = 200_000
MAX_COMPRESSION_RATIO = 200  # a zip bomb inflates far more
_ZIP_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)  # what torch's reader inflates


class UnsafeProgram(ValueError):
    """The archive holds something that would run code, or that this network does not run."""

    def __init__(self, entry: str, reason: str, message: str = "") -> None:
        super().__init__(message or f"refused .pt2 entry {entry!r}: {reason}")
        self.entry = entry
        self.reason = reason


EXPORT_HINT = (
    "export the model and save the program instead: "
    'torch.export.save(torch.export.export(model, (example,)), "model.pt2")'
)


class NotExported(UnsafeProgram):
    """A `torch.save` file (a state dict or a pickled module), or a plain pickle: loading
    it would unpickle it, and it holds no program to run; or any other file that is no
    zip archive at all. Told from the archive's entry
    names or the file's first byte, never by unpickling."""

    def __init__(self, entry: str, reason: str = "") -> None:
        reason = reason or (
            "a torch.save file (a state dict or a pickled nn.Module), not a torch.export "
            "program; it is never unpickled here"
        )
        super().__init__(entry, reason, f"the model is {reason}: {EXPORT_HINT}")


# what zipfile raises for an archive it cannot open: a bad central directory, a version
# it does not know (NotImplementedError), a name flagged UTF-8 that is not (UnicodeError)
_UNREADABLE = (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError)


def open_archive(path: Path) -> zipfile.ZipFile:
    """The archive at `path`, open; UnsafeProgram if it is not one zipfile can read."""
    try:
        return zipfile.ZipFile(path)
    except _UNREADABLE as exc:  # UnicodeDecodeError is a ValueError
        if _starts_as_pickle(path):
            raise NotExported(path.name) from None
        # any other file (a text file, an ONNX model, a truncated download) holds no program
        reason = f"not a torch.export program: it is not a .pt2 (zip) archive ({exc})"
        raise NotExported(path.name, reason) from None


def _starts_as_pickle(path: Path) -> bool:
    """A pickle of protocol 2 or later (legacy torch.save, pickle.dump) opens with PROTO."""
    try:
        with path.open("rb") as f:
            head = f.read(2)
    except OSError:
        return False
    return len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def check_entries(infos: list[zipfile.ZipInfo], size: int) -> str:
    if not infos:
        raise UnsafeProgram("", "the archive is empty")
    if len(infos) > MAX_ARCHIVE_ENTRIES:
        raise UnsafeProgram("", f"the archive has {len(infos)} entries")
    roots = set()
    seen: dict[str, str] = {}
    for info in infos:
        _check_entry(info, size)
        name = info.filename
        if name.lower() in seen:
            raise UnsafeProgram(
                name,
                f"the name appears more than once (also as {seen[name.lower()]!r}); zip "
                "readers disagree on which copy counts, so one could be checked and another "
                "loaded",
            )
        seen[name.lower()] = name
        roots.add(name.split("/")[0])
    if len(roots) != 1:
        raise UnsafeProgram(", ".join(sorted(roots)), "a .pt2 archive has exactly one top folder")
    _check_apart(infos)
    return roots.pop()


def _check_apart(infos: list[zipfile.ZipInfo]) -> None:
    """Refuses entries whose bytes overlap in the archive: several entries unpacking the
    same compressed bytes, each within the ratio, make a zip bomb of a small upload (one
    entry's local header is at least 30 bytes and its name before its data)."""
    ordered = sorted(infos, key=lambda i: i.header_offset)
    for before, entry in pairwise(ordered):
        end = before.header_offset + 30 + len(before.filename.encode()) + before.compress_size
        if entry.header_offset < end:
            raise UnsafeProgram(
                entry.filename,
                f"entry overlaps {before.filename!r} in the archive (a zip bomb?)",
            )


def _check_entry(info: zipfile.ZipInfo, size: int) -> None:
    name = info.filename
    parts = name.split("/")
    if info.orig_filename != name or not (name.isascii() and name.isprintable()):
        raise UnsafeProgram(name, "entry name holds a NUL, a control or a non-ASCII character")
    if name.startswith("/") or "\\" in name or ".." in parts or len(parts) < 2:
        raise UnsafeProgram(name, "entry path is absolute, escapes the archive or has no root")
    kind = stat.S_IFMT(info.external_attr >> 16)
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        raise UnsafeProgram(name, "entry is a symbolic link or a special file, not a plain file")
    if info.flag_bits & 0x1 or info.compress_type not in _ZIP_METHODS:
        raise UnsafeProgram(name, "entry is encrypted or compressed with an unknown method")
    if info.header_offset + info.compress_size > size:
        raise UnsafeProgram(
            name, f"entry declares {info.compress_size} bytes; the archive has {size}"
        )
    if info.compress_type == zipfile.ZIP_STORED and info.file_size != info.compress_size:
        raise UnsafeProgram(name, "entry is stored, but declares two different sizes")
    if info.compress_size and info.file_size > MAX_COMPRESSION_RATIO * info.compress_size:
        raise UnsafeProgram(name, "compression ratio is implausible (a zip bomb?)")


def read_entry(archive: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int) -> bytes:
    if info.file_size > limit:
        raise UnsafeProgram(info.filename, f"{info.file_size} bytes, more than {limit}")
    try:
        with archive.open(info) as f:
            data = f.read(limit + 1)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, zlib.error) as exc:
        raise UnsafeProgram(info.filename, f"cannot be read: {exc}") from None
    if len(data) != info.file_size:
        raise UnsafeProgram(info.filename, "holds more or fewer bytes than it declares")
    return data
