"""What an executor writes, kept per task: the child's stdout and stderr go to one file.

The daemon opens the file (unlinked, so nothing else can open it) and passes its
descriptor to the child, which points its stdout and stderr at it once the sandbox is on
and empties it as each task starts: what a task, its tracebacks, warnings and the
programs it starts (Blender) write lands there. After the task the child reads the tail;
when the child dies mid-task the daemon reads it. `Redactor` then swaps this node's paths
for placeholders and keeps the last MAX_LOG_BYTES.
"""

import fcntl
import os
import re
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

from sparegrid.wire.tasklog import MAX_LOG_BYTES

# read a little more than is kept, so a path cut at the start of the window is redacted
# whole or dropped with its line
READ_BYTES = MAX_LOG_BYTES + 4096


class LogFile:
    """The file one child writes executor output to, emptied at each task's start."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    @classmethod
    def create(cls, directory: Path) -> "LogFile":
        fd, path = tempfile.mkstemp(prefix="slot-", suffix=".log", dir=directory)
        os.unlink(path)
        # Appending: writes go to the end wherever the offset is, so emptying the file is
        # all a reset needs (stdout, stderr and the executor's programs share it).
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_APPEND)
        return cls(fd)

    def capture(self) -> None:
        """Points this process's stdout and stderr at the file (the child, once)."""
        _flush()
        os.dup2(self.fd, 1)
        os.dup2(self.fd, 2)

    def reset(self) -> None:
        """Empties the file for the next task (a look first: most tasks write nothing).
        The descriptors share one offset, so moving it to the start moves it for stdout,
        stderr and the executor's programs, should one turn O_APPEND off."""
        _flush()
        if os.fstat(self.fd).st_size:
            os.ftruncate(self.fd, 0)
            os.lseek(self.fd, 0, os.SEEK_SET)

    def tail(self) -> bytes:
        """The last READ_BYTES written since the last reset."""
        _flush()
        size = os.fstat(self.fd).st_size
        if not size:
            return b""
        return os.pread(self.fd, min(size, READ_BYTES), max(size - READ_BYTES, 0))

    def close(self) -> None:
        os.close(self.fd)


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            try:  # noqa: SIM105 (not contextlib.suppress: this runs twice per task)
                stream.flush()
            except (OSError, ValueError):
                pass


class Redactor:
    """Replaces this node's paths in a log with placeholders, then keeps its tail.

    `paths` maps a placeholder ("<scratch>") to a directory; a longer path is replaced
    before the paths that hold it, and a path matches only whole (followed by "/", a
    quote, a space, punctuation or the end), so "/home/al" leaves "/home/alice" alone.
    """

    def __init__(self, paths: Mapping[str, Path]) -> None:
        spelled: dict[bytes, bytes] = {}
        for placeholder, path in paths.items():
            for form in {str(path.absolute()), str(path.resolve())}:
                if form.strip("/"):  # never the root
                    spelled.setdefault(os.fsencode(form.rstrip("/")), placeholder.encode())
        self._paths = sorted(spelled.items(), key=lambda item: -len(item[0]))
        alternatives = b"|".join(re.escape(p) for p, _ in self._paths)
        self._pattern = re.compile(b"(" + alternatives + rb")(?=[/\s'\"`:,;)\]}>]|$)")

    def __call__(self, raw: object) -> bytes | None:
        """The log to send, or None when there is none (or the child sent no bytes)."""
        if not isinstance(raw, bytes):
            return None
        if not raw:
            return raw
        text = raw[-READ_BYTES:]
        if self._paths:
            names = dict(self._paths)
            text = self._pattern.sub(lambda m: names[m.group(1)], text)
        if len(text) > MAX_LOG_BYTES:
            text = text[-MAX_LOG_BYTES:]
            _, newline, rest = text.partition(b"\n")
            text = rest if newline else text  # the first line was cut: drop it
        return text


def node_paths(data_dir: Path, work_root: Path) -> dict[str, Path]:
    """What a device's logs must not reveal: its scratch and work directories, the blob
    cache, the data directory and the volunteer's home."""
    return {
        "<scratch>": work_root / "scratch",
        "<work>": work_root,
        "<cache>": data_dir / "cache",
        "<data>": data_dir,
        "<home>": Path.home(),
    }
