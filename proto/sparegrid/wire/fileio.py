"""Appending to a file with O_DIRECT where the filesystem allows it, else buffered.

Shared by the coordinator's blob store and the SDK's downloads. On the 2-core development
VM moving 1 GiB through the page cache cost seconds of kernel CPU (the VM hands freed
memory back to its host, so fresh pages are slow to come by), while 4 MiB O_DIRECT writes
stored it in about a second.
"""

import contextlib
import errno
import mmap
import os
from pathlib import Path

ALIGN = 4096  # O_DIRECT wants file offsets, lengths and memory aligned to the block size
STAGING = 8 << 20  # the aligned buffer O_DIRECT reads and writes go through
O_DIRECT: int = getattr(os, "O_DIRECT", 0)


def open_direct(path: Path, flags: int) -> tuple[int, bool]:
    """Opens with O_DIRECT if the filesystem takes it; returns (fd, direct)."""
    if O_DIRECT:
        with contextlib.suppress(OSError):
            return os.open(path, flags | O_DIRECT, 0o644), True
    return os.open(path, flags, 0o644), False


def buffered(fd: int) -> None:
    """Turns O_DIRECT off on an open file (called only where O_DIRECT exists)."""
    import fcntl  # POSIX only, like O_DIRECT: importing it at the top would break Windows

    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~O_DIRECT)


class Appender:
    """Appends to a file through an aligned staging buffer, with O_DIRECT when it can.

    Whole blocks go to the disk as they arrive; the unaligned tail waits in the buffer
    until the next write or `close`/`sync`, which write it with an ordinary write.
    """

    def __init__(self, path: Path) -> None:
        self._fd, self._direct = open_direct(path, os.O_WRONLY | os.O_CREAT)
        self._buf = mmap.mmap(-1, STAGING + ALIGN)  # page-aligned
        size = os.fstat(self._fd).st_size
        self._pos = size - size % ALIGN  # file offset of the buffer's first byte
        self._fill = size - self._pos
        if self._fill:  # resuming mid-block: that block is rewritten whole
            with path.open("rb") as f:
                f.seek(self._pos)
                self._buf[: self._fill] = f.read(self._fill)

    @property
    def size(self) -> int:
        return self._pos + self._fill

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = min(len(view), len(self._buf) - self._fill)
            self._buf[self._fill : self._fill + n] = view[:n]
            self._fill += n
            view = view[n:]
            self._flush(self._fill - self._fill % ALIGN)

    def _flush(self, n: int) -> None:
        """Writes the buffer's first n bytes at the file position, keeps the rest."""
        if not n:
            return
        done = 0
        with memoryview(self._buf) as buf:
            while done < n:
                try:
                    done += os.pwrite(self._fd, buf[done:n], self._pos + done)
                except OSError as exc:  # some filesystems open O_DIRECT but refuse writes
                    if not self._direct or exc.errno != errno.EINVAL:
                        raise
                    buffered(self._fd)
                    self._direct = False
        rest = self._fill - n
        if rest:
            self._buf[:rest] = self._buf[n : self._fill]
        self._pos += n
        self._fill = rest

    def _flush_tail(self) -> None:
        if self._fill:
            if self._direct:  # the tail is not a whole block: write it through the cache
                buffered(self._fd)
                self._direct = False
            self._flush(self._fill)

    def sync(self) -> None:
        """Everything written so far is on disk when this returns."""
        self._flush_tail()
        os.fsync(self._fd)

    def close(self) -> None:
        """Writes the tail, so the file holds every byte given to `write`."""
        if self._buf.closed:
            return
        try:
            self._flush_tail()
        finally:
            os.close(self._fd)
            self._buf.close()
