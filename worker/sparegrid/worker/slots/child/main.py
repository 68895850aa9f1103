"""The child process that runs executors for one device: `python -m sparegrid.worker.slots.child.main FD`.

It reads frames on stdin (a ChildInit, then RunBatch and CancelTasks) and writes lists of
Outcomes on the original stdout; what executors print goes to the log file (logfile.py),
emptied as each task starts, and its tail comes back with the task's outcome. Results of
quick tasks are sent together, at most FLUSH_SECONDS after the first is ready. It exits
when stdin closes; SIGINT and SIGTERM are ignored because the daemon decides when to stop.

A task that breaks its device's context (a CUDA device-side assert, an illegal memory
access: torch raises `AcceleratorError`, and every later CUDA call in the process fails)
fails alone: the child sends what it has and exits, and the daemon starts a fresh one for
the rest, rather than fail every later task, of every client, on that device.
"""

import contextlib
import hashlib
import os
import select
import shutil
import signal
import sys
import time
import traceback
from pathlib import Path

from sparegrid.worker.executors.base import (
    EXECUTOR_ERROR,
    UNKNOWN_KIND,
    ExecOutput,
    ExecTask,
    Executor,
    ExecutorError,
)
from sparegrid.worker.executors.registry import instantiate
from sparegrid.worker.slots.child.logfile import LogFile
from sparegrid.worker.slots.child.protocol import (
    HEADER_SIZE,
    CancelTasks,
    ChildInit,
    ChildTask,
    Outcome,
    OutputData,
    RunBatch,
    SharedState,
    decode_frame,
    encode_frame,
    frame_length,
)
from sparegrid.worker.slots.child.sandbox import SandboxSettings, apply_from_env, before_task

FLUSH_SECONDS = 0.002
# exceptions after which the device is unusable in this process (torch.AcceleratorError)
DEVICE_BREAKING = frozenset({"AcceleratorError"})


class FrameReader:
    """Frames from a raw file descriptor, with a non-blocking check between tasks."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._buf = bytearray()

    def _frame(self) -> object | None:
        if len(self._buf) < HEADER_SIZE:
            return None
        end = HEADER_SIZE + frame_length(bytes(self._buf[:HEADER_SIZE]))
        if len(self._buf) < end:
            return None
        payload = bytes(self._buf[HEADER_SIZE:end])
        del self._buf[:end]
        return decode_frame(payload)

    def _fill(self) -> None:
        data = os.read(self._fd, 1 << 20)
        if not data:
            raise EOFError
        self._buf += data

    def read(self) -> object:
        while (frame := self._frame()) is None:
            self._fill()
        return frame

    def poll(self) -> list[object]:
        """Frames that have already arrived, without waiting."""
        frames = []
        while True:
            frame = self._frame()
            if frame is not None:
                frames.append(frame)
                continue
            if not select.select([self._fd], [], [], 0)[0]:
                return frames
            self._fill()


class Child:
    def __init__(
        self,
        init: ChildInit,
        reader: FrameReader,
        out_fd: int,
        state: SharedState,
        log: LogFile | None = None,
    ):
        self._init = init
        self._log = log
        self._reader = reader
        self._out_fd = out_fd
        self._state = state
        self._executors: dict[str, Executor] = {}
        self._scratch = init.work_root / "scratch"  # one per child, emptied after each task
        self._scratch_made = False
        self._cancelled: set[int] = set()
        self._device_broken = False
        self.sandbox: SandboxSettings | None = None

    def serve(self) -> None:
        while True:
            try:
                message = self._reader.read()
            except EOFError:
                return
            if isinstance(message, RunBatch):
                self._run_batch(message.tasks)
            # A CancelTasks between batches names tasks already finished: nothing to do.

    def _send(self, outcomes: list[Outcome]) -> None:
        view = memoryview(encode_frame(outcomes))
        while view:
            view = view[os.write(self._out_fd, view) :]

    def _take_cancels(self) -> None:
        for message in self._reader.poll():
            if isinstance(message, CancelTasks):
                self._cancelled.update(message.serials)

    def _run_batch(self, tasks: list[ChildTask]) -> None:
        ready: list[Outcome] = []
        since = time.monotonic()
        for i, task in enumerate(tasks):
            if i + 1 < len(tasks):
                self._prepare(tasks[i + 1])
            ready.append(self._run_or_skip(task))
            if self._device_broken:  # the rest of the batch goes to a fresh child
                self._send(ready)
                os._exit(0)
            if time.monotonic() - since >= FLUSH_SECONDS:
                self._send(ready)
                ready, since = [], time.monotonic()
        if ready:
            self._send(ready)
        self._cancelled.clear()

    def _prepare(self, task: ChildTask) -> None:
        """Lets the executor stage the next task's inputs while this one runs (optional)."""
        try:
            prepare = getattr(self._executor(task.kind), "prepare", None)
            if prepare is not None:
                prepare(self._exec_task(task))
        except Exception:  # staging is an optimisation: the task itself reports errors
            pass

    def _exec_task(self, task: ChildTask) -> ExecTask:
        return ExecTask(task.params, dict(task.inputs), self._scratch, self._init.device)

    def _run_or_skip(self, task: ChildTask) -> Outcome:
        self._state.set_running(task.serial, time.monotonic())
        # Checked after publishing the serial: a cancel sent before the daemon read the
        # state is seen here, and one sent after it finds this task running and kills us.
        # (One look: a cancel that came before the serial was published is in the pipe.)
        self._take_cancels()
        try:
            if task.serial in self._cancelled:
                return Outcome(task.serial, cancelled=True)
            before_task(self.sandbox)  # sandbox hook: this task's CPU-time budget
            if self._log is None:
                return self._run(task)
            self._log.reset()
            return self._run(task).with_log(self._log.tail())
        finally:
            self._state.clear()

    def _executor(self, kind: str) -> Executor:
        if kind not in self._executors:
            target = self._init.executors.get(kind)
            if target is None:
                raise ExecutorError(UNKNOWN_KIND, f"this node has no {kind!r} executor", True)
            self._executors[kind] = instantiate(target)
        return self._executors[kind]

    def _run(self, task: ChildTask) -> Outcome:
        started = time.perf_counter_ns()
        try:
            executor = self._executor(task.kind)
            if not self._scratch_made:  # made once; again only if a task removed it
                self._scratch.mkdir(parents=True, exist_ok=True)
                self._scratch_made = True
            outputs = executor.run(self._exec_task(task))
            duration_us = (time.perf_counter_ns() - started) // 1000
            return Outcome(task.serial, _output_data(outputs), duration_us)
        except ExecutorError as exc:
            return Outcome(task.serial, code=exc.code, message=exc.message, retryable=exc.retryable)
        except Exception as exc:
            traceback.print_exc()  # into the task's log
            self._device_broken = type(exc).__name__ in DEVICE_BREAKING
            message = f"{task.kind} executor raised {type(exc).__name__}: {exc}"
            return Outcome(task.serial, code=EXECUTOR_ERROR, message=message, retryable=True)
        finally:
            self._scratch_made = _empty(self._scratch)


def _empty(directory: Path) -> bool:
    """Removes what a task left in its scratch directory (cheap when it left nothing);
    False if the directory itself is gone."""
    try:
        entries = os.scandir(directory)
    except FileNotFoundError:
        return False
    with entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
    return True


def _output_data(outputs: list[ExecOutput]) -> list[OutputData]:
    if not isinstance(outputs, list) or not all(isinstance(o, ExecOutput) for o in outputs):
        raise ExecutorError(EXECUTOR_ERROR, "executor must return a list of ExecOutput", True)
    names = [o.name for o in outputs]
    if len(set(names)) != len(names) or not all(names):
        raise ExecutorError(EXECUTOR_ERROR, f"output names must be unique and set: {names}", True)
    return [
        OutputData(o.name, hashlib.sha256(o.data).hexdigest(), len(o.data), bytes(o.data))
        for o in outputs
    ]


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    out_fd = os.dup(1)
    os.dup2(2, 1)  # executors that print must not corrupt the frames on stdout
    state = SharedState(int(argv[1]))
    log = LogFile(int(argv[2])) if len(argv) > 2 else None
    reader = FrameReader(0)
    try:
        init = reader.read()
    except EOFError:
        return 0
    if not isinstance(init, ChildInit):
        print(f"sparegrid child: expected ChildInit, got {type(init).__name__}", file=sys.stderr)
        return 2
    sys.path[:] = init.sys_path
    child = Child(init, reader, out_fd, state, log)
    child.sandbox = apply_from_env()  # sandbox hook: isolate before running any task
    if log is not None:  # after the sandbox: its refusal still reaches the daemon's stderr
        log.capture()
    child.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
