"""Runs tasks for one device in a long-lived child process that may die without harm.

The daemon sends the child a batch of queued tasks in one message and gets outcomes back a
few at a time; the child runs one task at a time. If the child dies, the task it was running
fails with EXECUTOR_CRASHED and the rest of the batch goes to a fresh child. A task that
runs past the time limit, or is cancelled while running, is stopped by killing the child.
"""

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from sparegrid.worker.executors.base import EXECUTOR_CRASHED, TIMEOUT, DeviceRef
from sparegrid.worker.node.devices import DeviceInfo
from sparegrid.worker.slots.child.frames import ForgedFrame, decode_child_frame
from sparegrid.worker.slots.child.logfile import LogFile, Redactor
from sparegrid.worker.slots.child.protocol import (
    HEADER_SIZE,
    CancelTasks,
    ChildInit,
    ChildTask,
    Outcome,
    RunBatch,
    SharedState,
    encode_frame,
    frame_length,
)
from sparegrid.worker.slots.child.sandbox import ENV as SANDBOX_ENV
from sparegrid.worker.slots.child.sandbox import SandboxSettings

VRAM_SHARE_ENV = "SPAREGRID_MAX_VRAM_FRACTION"  # executors cap their GPU memory to this

_log = logging.getLogger("sparegrid.worker.slots.child.runner")
_DIED = None  # what the reader queues when the child's stdout closes
_STOP_GRACE = 2.0
_IDLE_CHECK = 0.05  # how often to look for the next task starting when none is running
_MAX_IDLE_DEATHS = 3  # deaths with no task running before the next task is blamed


@dataclass(frozen=True)
class _Kill:
    reason: str  # "timeout" or "cancel"
    serial: int


class ChildProcess:
    """One running child: its pipes, its state record and a task reading its outcomes."""

    def __init__(self, proc: asyncio.subprocess.Process, state: SharedState, log: LogFile) -> None:
        self.proc = proc
        self.state = state
        self.log = log
        self.last_log: bytes | None = None  # the log's tail when the child was reaped
        self.events: asyncio.Queue[list[Outcome] | None] = asyncio.Queue()
        self.killed: _Kill | None = None
        self._reader = asyncio.create_task(self._read_outcomes())

    @classmethod
    async def start(cls, init: ChildInit, env: Mapping[str, str]) -> "ChildProcess":
        state = SharedState.create(init.work_root)
        log = LogFile.create(init.work_root)
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "sparegrid.worker.slots.child.main",
                str(state.fd),
                str(log.fd),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                pass_fds=(state.fd, log.fd),
                env=dict(env),
                start_new_session=True,
            )
        except BaseException:
            state.close()
            log.close()
            raise
        child = cls(proc, state, log)
        child.post(init)
        return child

    async def _read_outcomes(self) -> None:
        stdout = self.proc.stdout
        assert stdout is not None
        try:
            while True:
                header = await stdout.readexactly(HEADER_SIZE)
                payload = await stdout.readexactly(frame_length(header))
                outcomes = decode_child_frame(payload)  # never plain pickle: see frames.py
                if not isinstance(outcomes, list) or not all(
                    isinstance(o, Outcome) for o in outcomes
                ):
                    raise ForgedFrame("child frame is not a list of outcomes")
                self.events.put_nowait(outcomes)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except ForgedFrame as exc:  # treated as the child dying: it is killed, the task fails
            _log.error("child %d sent a forged frame (%s); killing it", self.proc.pid, exc)
            self.kill()
        finally:
            self.events.put_nowait(_DIED)

    def post(self, message: object) -> None:
        stdin = self.proc.stdin
        if stdin is None or stdin.is_closing():
            return
        with contextlib.suppress(ConnectionError, RuntimeError):
            stdin.write(encode_frame(message))

    def kill(self, why: _Kill | None = None) -> None:
        if why is not None and self.killed is None:
            self.killed = why
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the executor's own children too
        except (ProcessLookupError, PermissionError):
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()

    async def reap(self) -> int:
        """Waits for the child to be gone and frees what it held; returns its exit status."""
        code = await self.proc.wait()
        await self._reader
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.state.close()
        if self.last_log is None:
            self.last_log = self.log.tail()
            self.log.close()
        return code

    async def stop(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()  # the child exits when its stdin closes
        try:
            async with asyncio.timeout(_STOP_GRACE):
                await self.proc.wait()
        except TimeoutError:
            self.kill()
        await self.reap()


def describe_exit(code: int) -> str:
    if code < 0:
        name = signal.Signals(-code).name if -code in signal.valid_signals() else str(-code)
        hint = " (the system may have run out of memory)" if -code == signal.SIGKILL else ""
        return f"killed by {name}{hint}"
    return f"exit status {code}"


OnOutcome = Callable[[Outcome], None]


class DeviceRunner:
    """Runs batches of tasks on one device, one at a time, in a child process."""

    def __init__(
        self,
        device: DeviceInfo,
        executors: Mapping[str, str],
        work_root: Path,
        time_limit: float,
        monotonic: Callable[[], float] = time.monotonic,  # must match the child's clock
        sandbox: SandboxSettings | None = None,
        vram_share: float = 1.0,
        redact: Redactor | None = None,
    ) -> None:
        self.device = device
        self._redact = redact or Redactor({})
        self._init = ChildInit(
            sys_path=list(sys.path),
            executors=dict(executors),
            device=DeviceRef(device.index, device.kind, device.name),
            work_root=work_root,
        )
        self._time_limit = time_limit
        self._monotonic = monotonic
        self._child: ChildProcess | None = None
        self._pending: dict[int, ChildTask] = {}
        self._cancelled: set[int] = set()
        self._idle_deaths = 0
        self._sandbox = sandbox
        self._vram_share = vram_share

    @property
    def pid(self) -> int | None:
        """The child process's id, while one runs."""
        return self._child.proc.pid if self._child is not None else None

    @property
    def busy(self) -> bool:
        """A task of this device is running (not just queued in a batch)."""
        child = self._child
        return bool(self._pending) and child is not None and child.state.running() is not None

    def _child_env(self) -> dict[str, str]:
        env = dict(os.environ)
        visible = self.device.uuid or str(self.device.index)
        env["CUDA_VISIBLE_DEVICES"] = visible if self.device.kind == "cuda" else ""
        env[VRAM_SHARE_ENV] = f"{self._vram_share:g}"
        tmp = self._init.work_root / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        env["TMPDIR"] = str(tmp)  # the scratch area is the only writable place
        cache = self._init.work_root / "cache"  # e.g. compiled kernels, for this child's life
        env["XDG_CACHE_HOME"] = str(cache)
        env["TRITON_CACHE_DIR"] = str(cache / "triton")
        env["TORCHINDUCTOR_CACHE_DIR"] = str(cache / "inductor")
        if self._sandbox is not None:
            env[SANDBOX_ENV] = self._sandbox.to_env()
        return env

    async def _ensure_child(self) -> ChildProcess:
        if self._child is None:
            self._init.work_root.mkdir(parents=True, exist_ok=True)
            self._child = await ChildProcess.start(self._init, self._child_env())
        return self._child

    async def run(self, tasks: Sequence[ChildTask], on_outcome: OnOutcome) -> None:
        """Runs `tasks` in order and reports each outcome; returns when all have one."""
        self._pending = {t.serial: t for t in tasks}
        try:
            while self._pending:
                child = await self._ensure_child()
                # No await between this and the post: a cancel that came while the child
                # was starting is honoured here, one that comes later reaches the child.
                self._skip_cancelled(on_outcome)
                if not self._pending:
                    break
                child.post(RunBatch(list(self._pending.values())))
                if await self._collect(child, on_outcome):
                    self._child = None
        finally:
            self._pending = {}
            self._cancelled.clear()

    def cancel(self, serial: int) -> None:
        """Stops a task given to `run`: skipped if not started, the child killed if running."""
        if serial not in self._pending:
            return
        self._cancelled.add(serial)
        child = self._child
        if child is None:
            return
        child.post(CancelTasks([serial]))
        running = child.state.running()
        if running is not None and running[0] == serial:
            child.kill(_Kill("cancel", serial))

    def _skip_cancelled(self, on_outcome: OnOutcome) -> None:
        for serial in [s for s in self._pending if s in self._cancelled]:
            del self._pending[serial]
            on_outcome(Outcome(serial, cancelled=True))

    def _deadline_wait(self, child: ChildProcess) -> tuple[tuple[int, float] | None, float | None]:
        """The task running now and how long until its limit; None: wait for the child."""
        if child.killed:
            return None, None
        running = child.state.running()
        if running is None or running[0] not in self._pending:
            return None, min(_IDLE_CHECK, self._time_limit)  # between tasks: look again soon
        return running, max(running[1] + self._time_limit - self._monotonic(), 0.0)

    async def _collect(self, child: ChildProcess, on_outcome: OnOutcome) -> bool:
        """Hands on outcomes until the batch is done (False) or the child died (True)."""
        while self._pending:
            running, wait = self._deadline_wait(child)
            try:
                async with asyncio.timeout(wait):  # not wait_for: it can swallow a cancel
                    event = await child.events.get()
            except TimeoutError:
                if running is not None and child.state.running() == running:
                    _log.warning("task ran past %gs; stopping it", self._time_limit)
                    child.kill(_Kill("timeout", running[0]))
                continue
            if event is _DIED:
                await self._after_death(child, on_outcome)
                return True
            self._idle_deaths = 0
            for outcome in event:
                if self._pending.pop(outcome.serial, None) is not None:
                    on_outcome(self._redacted(outcome))
        return False

    def _redacted(self, outcome: Outcome) -> Outcome:
        """The outcome with its log's paths redacted and cut to size (the child may have
        sent anything in its place)."""
        return outcome.with_log(self._redact(outcome.log))

    async def _after_death(self, child: ChildProcess, on_outcome: OnOutcome) -> None:
        running = child.state.running()
        code = await child.reap()
        why = child.killed
        if why is None:
            _log.warning(
                "child for device %d died: %s%s",
                self.device.index,
                describe_exit(code),
                self._last_words(child.last_log),
            )
            serial = self._blame(running)
            if serial is None:
                return  # it died between tasks: the batch goes to a fresh child
            message = f"the executor process died ({describe_exit(code)}) while running this task"
            outcome = Outcome(
                serial, code=EXECUTOR_CRASHED, message=message, retryable=True, log=child.last_log
            )
        elif why.reason == "timeout":
            message = f"the task ran longer than this node's limit of {self._time_limit:g}s"
            outcome = Outcome(
                why.serial, code=TIMEOUT, message=message, retryable=True, log=child.last_log
            )
        else:
            outcome = Outcome(why.serial, cancelled=True)
        if self._pending.pop(outcome.serial, None) is not None:
            on_outcome(self._redacted(outcome))

    def _last_words(self, log: bytes | None) -> str:
        """The last line the child wrote, redacted, for the volunteer's log: why it died
        (a render over the memory limit says so) without reading the task's log."""
        lines = (self._redact(log) or b"").decode(errors="replace").strip().splitlines()
        if not lines:
            return ""
        last = "".join(ch if ch.isprintable() else "?" for ch in lines[-1][-300:])
        return f"; it last wrote: {last}"

    def _blame(self, running: tuple[int, float] | None) -> int | None:
        """The task a child died running; after repeated deaths between tasks, the first."""
        if running is not None and running[0] in self._pending:
            return running[0]
        self._idle_deaths += 1
        if self._idle_deaths < _MAX_IDLE_DEATHS:
            return None
        self._idle_deaths = 0
        return next(iter(self._pending))

    async def close(self) -> None:
        child, self._child = self._child, None
        if child is not None:
            await child.stop()

    def kill(self) -> None:
        """Stops the running task now (forced shutdown)."""
        if self._child is not None:
            self._child.kill()
