"""What the daemon and a device's child process say to each other over the child's pipes.

Frames are an 8-byte big-endian length and a pickle (both ends are this package, on
private pipes). A shared 16-byte state file says which task the child is running and since
when, so the daemon can time out or cancel exactly that task without a message per task.
"""

import mmap
import os
import pickle
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from sparegrid.worker.executors.base import DeviceRef

_HEADER = struct.Struct(">Q")
_STATE = struct.Struct("<qd")  # running serial (0: none), started at (time.monotonic)
STATE_SIZE = _STATE.size


@dataclass(frozen=True)
class ChildInit:
    sys_path: list[str]
    executors: dict[str, str]  # kind -> "module:Class"
    device: DeviceRef
    work_root: Path


@dataclass(frozen=True)
class ChildTask:
    serial: int  # unique per daemon, never 0
    kind: str
    params: bytes
    inputs: dict[str, Path]


@dataclass(frozen=True)
class RunBatch:
    tasks: list[ChildTask]


@dataclass(frozen=True)
class CancelTasks:
    serials: list[int]


@dataclass(frozen=True)
class OutputData:
    name: str
    digest: str
    size: int
    data: bytes


@dataclass(frozen=True)
class Outcome:
    """How one task ended. `code` empty means success; `cancelled` means no result is wanted.
    `log` is the tail of what the executor wrote (None: no executor ran)."""

    serial: int
    outputs: list[OutputData] = field(default_factory=list)
    duration_us: int = 0
    code: str = ""
    message: str = ""
    retryable: bool = False
    cancelled: bool = False
    log: bytes | None = None

    @property
    def ok(self) -> bool:
        return not self.code and not self.cancelled

    def with_log(self, log: bytes | None) -> "Outcome":
        """This outcome with `log` in its place (dataclasses.replace, without its cost
        per task)."""
        if log is self.log:
            return self
        return Outcome(
            self.serial,
            self.outputs,
            self.duration_us,
            self.code,
            self.message,
            self.retryable,
            self.cancelled,
            log,
        )


def encode_frame(obj: object) -> bytes:
    payload = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(payload)) + payload


def frame_length(header: bytes) -> int:
    (length,) = _HEADER.unpack(header)
    return int(length)


HEADER_SIZE = _HEADER.size


def decode_frame(payload: bytes) -> object:
    return pickle.loads(payload)


class SharedState:
    """The 16-byte running-task record, mapped by both processes from one file descriptor."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._map = mmap.mmap(fd, STATE_SIZE)

    @classmethod
    def create(cls, directory: Path) -> "SharedState":
        fd, path = tempfile.mkstemp(prefix="slot-", suffix=".state", dir=directory)
        os.unlink(path)
        os.ftruncate(fd, STATE_SIZE)
        return cls(fd)

    def set_running(self, serial: int, started: float) -> None:
        # One write of both fields; the reader re-reads until two reads agree.
        self._map[:STATE_SIZE] = _STATE.pack(serial, started)

    def clear(self) -> None:
        self._map[:STATE_SIZE] = _STATE.pack(0, 0.0)

    def running(self) -> tuple[int, float] | None:
        """(serial, started) of the task the child is running, or None."""
        for _ in range(100):
            first = bytes(self._map[:STATE_SIZE])
            if first == bytes(self._map[:STATE_SIZE]):
                break
        serial, started = _STATE.unpack(first)
        return (serial, started) if serial else None

    def close(self) -> None:
        self._map.close()
        os.close(self.fd)
