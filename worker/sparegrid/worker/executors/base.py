"""The executor plugin interface: what a job kind's runner receives and returns.

Executors run in a child process per device (see sparegrid.worker.slots.child.runner), so they may
crash, leak or hog memory without harming the daemon. Only the device they were given is
visible to them: CUDA_VISIBLE_DEVICES names it, so inside the executor it is "cuda:0".
"""

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Protocol, runtime_checkable

# Stable failure codes the worker reports (TaskFailure.code).
BAD_PARAMS = "BAD_PARAMS"
BAD_INPUT = "BAD_INPUT"
EXECUTOR_ERROR = "EXECUTOR_ERROR"
EXECUTOR_CRASHED = "EXECUTOR_CRASHED"
TIMEOUT = "TIMEOUT"
UNKNOWN_KIND = "UNKNOWN_KIND"
UNKNOWN_DEVICE = "UNKNOWN_DEVICE"
INPUT_UNAVAILABLE = "INPUT_UNAVAILABLE"
INPUT_DIGEST_MISMATCH = "INPUT_DIGEST_MISMATCH"


@dataclass(frozen=True)
class DeviceRef:
    """The device a task runs on: the worker's index for it, its kind and its name."""

    index: int
    kind: str  # "cpu" or "cuda"
    name: str


@dataclass(frozen=True)
class ExecTask:
    params: bytes  # the job's JSON parameters, exactly as submitted
    inputs: Mapping[str, Path]  # input name -> verified file in the local cache (read-only)
    workdir: Path  # empty scratch directory, removed after the task
    device: DeviceRef


@dataclass(frozen=True)
class ExecOutput:
    name: str
    data: bytes


class ExecutorError(Exception):
    """A task cannot be done; `retryable` False means retrying elsewhere will not help."""

    def __init__(self, code: str, message: str, retryable: bool = False) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.retryable = retryable


@runtime_checkable
class Executor(Protocol):
    """Runs one job kind. Constructed with no arguments, once per child process."""

    name: ClassVar[str]  # the job kind it runs
    version: ClassVar[str]

    def run(self, task: ExecTask) -> list[ExecOutput]: ...

    # Optional: `prepare(task)` is called with the task that will run next, before the
    # current one runs, so an executor can stage its inputs in the background.
