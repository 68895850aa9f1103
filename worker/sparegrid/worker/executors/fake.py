"""Executors that misbehave on purpose, for tests of the worker's fault handling."""

import functools
import hashlib
import json
import os
import socket
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

from sparegrid.worker.executors.base import ExecOutput, ExecTask


class CrashExecutor:
    """Kills its own process, as a segfault or an OOM kill would."""

    name: ClassVar[str] = "crash"
    version: ClassVar[str] = "1.0"

    def run(self, task: ExecTask) -> list[ExecOutput]:
        os._exit(70)


class RaisingExecutor:
    """Raises an unexpected exception (not an ExecutorError)."""

    name: ClassVar[str] = "raise"
    version: ClassVar[str] = "1.0"

    def run(self, task: ExecTask) -> list[ExecOutput]:
        raise RuntimeError("this executor always fails")


class AcceleratorError(RuntimeError):
    """Named as torch names the error of a broken CUDA context."""


class DeviceFaultExecutor:
    """A device whose context a task can break, as a CUDA device-side assert does: with
    params {"break": true} it raises, and so does every later task in the same process;
    otherwise it returns "pid", the process that ran it."""

    name: ClassVar[str] = "devicefault"
    version: ClassVar[str] = "1.0"
    broken = False

    def run(self, task: ExecTask) -> list[ExecOutput]:
        if json.loads(task.params or b"{}").get("break"):
            DeviceFaultExecutor.broken = True
        if DeviceFaultExecutor.broken:
            raise AcceleratorError("CUDA error: device-side assert triggered")
        return [ExecOutput("pid", str(os.getpid()).encode())]


class ChattyExecutor:
    """Writes what a failing executor might, by every route (stderr, stdout, a warning, a
    program it starts), naming its inputs, scratch directory and home; then raises, or
    with params {"ok": true} returns "out"."""

    name: ClassVar[str] = "chatty"
    version: ClassVar[str] = "1.0"

    def run(self, task: ExecTask) -> list[ExecOutput]:
        inputs = ", ".join(str(path) for path in task.inputs.values())
        print(f"reading {inputs} into {task.workdir}/", file=sys.stderr)
        print(f"home is {Path.home()}", flush=True)
        warnings.warn(f"{task.workdir} is nearly full", stacklevel=1)
        subprocess.run(["/bin/sh", "-c", "echo from a program it started >&2"], check=False)
        if json.loads(task.params or b"{}").get("ok"):
            return [ExecOutput("out", b"fine")]
        raise ValueError(f"could not parse {inputs}")


class EscapeExecutor:
    """Tries what a malicious job would, and reports what happened as JSON in "report".

    params: "write" (paths to create), "read" (paths to read), "connect" ([host, port]
    pairs), "scratch_bytes" (bytes to write into its scratch directory).
    """

    name: ClassVar[str] = "escape"
    version: ClassVar[str] = "1.0"

    def run(self, task: ExecTask) -> list[ExecOutput]:
        params = json.loads(task.params)
        report: dict[str, str] = {}
        for path in params.get("write", []):
            report[f"write {path}"] = _attempt(functools.partial(Path(path).write_text, "escaped"))
        for path in params.get("read", []):
            report[f"read {path}"] = _attempt(Path(path).read_bytes)
        for host, port in params.get("connect", []):
            report[f"connect {host}:{port}"] = _attempt(functools.partial(_connect, host, port))
        size = int(params.get("scratch_bytes", 0))
        if size:
            target = task.workdir / "big.bin"
            report["scratch"] = _attempt(functools.partial(target.write_bytes, b"\0" * size))
        return [ExecOutput("report", json.dumps(report, sort_keys=True).encode())]


def _connect(host: str, port: int) -> None:
    socket.create_connection((host, port), timeout=2).close()


def _attempt(action: Callable[[], object]) -> str:
    try:
        action()
    except OSError as exc:
        return f"refused: {exc.strerror or exc}"
    return "done"


# --- dishonest or broken nodes, for the trust layer's adversarial tests -----------------
# Each one registers as "echo": a worker built with one of them answers echo tasks wrongly.


class WrongEchoExecutor:
    """Always wrong, and never twice the same way (random junk, as broken memory gives)."""

    name: ClassVar[str] = "echo"
    version: ClassVar[str] = "1.0"

    def run(self, task: ExecTask) -> list[ExecOutput]:
        return [ExecOutput("out", os.urandom(16).hex().encode())]


class LazyEchoExecutor:
    """Returns without working: an empty output, the same for every task (like zeros)."""

    name: ClassVar[str] = "echo"
    version: ClassVar[str] = "1.0"

    def run(self, task: ExecTask) -> list[ExecOutput]:
        return [ExecOutput("out", b"")]


class ColludingEchoExecutor:
    """Wrong in a way its partners copy: the same junk for the same task on every node."""

    name: ClassVar[str] = "echo"
    version: ClassVar[str] = "1.0"

    def run(self, task: ExecTask) -> list[ExecOutput]:
        return [ExecOutput("out", b"agreed junk: " + hashlib.sha256(task.params).digest()[:8])]


class FlakyEchoExecutor:
    """Right, except about one result in twenty (as an overclocked GPU might be)."""

    name: ClassVar[str] = "echo"
    version: ClassVar[str] = "1.0"

    def run(self, task: ExecTask) -> list[ExecOutput]:
        data = json.loads(task.params or b"{}").get("data", "")
        if os.urandom(1)[0] < 13:  # 13/256: about 5%
            return [ExecOutput("out", b"flipped bit " + os.urandom(4).hex().encode())]
        return [ExecOutput("out", str(data).encode())]
