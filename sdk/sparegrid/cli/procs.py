"""Child processes of `sparegrid demo`: started with logs, watched, stopped, reaped."""

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

POLL = 0.1


class DemoError(Exception):
    """A step of the demo failed; the message says which and why."""


@dataclass
class Proc:
    name: str
    popen: "subprocess.Popen[bytes]"
    log: Path

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None


def child_env(root: Path, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for children: no SPAREGRID_* settings, a private config home."""
    env = {k: v for k, v in (base or os.environ).items() if not k.startswith("SPAREGRID_")}
    env["XDG_CONFIG_HOME"] = str(root / "config")
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Processes:
    """`sparegrid` subcommands run as `python -m sparegrid.cli.main ...`, logs in `root`."""

    def __init__(self, root: Path, env: Mapping[str, str]) -> None:
        self.root = root
        self.env = dict(env)
        self.procs: list[Proc] = []

    def start(self, name: str, *args: str, env: Mapping[str, str] | None = None) -> Proc:
        """Starts a child; `env` adds to the shared environment."""
        log = self.root / f"{name}.log"
        cmd = [sys.executable, "-m", "sparegrid.cli.main", *args]
        with log.open("wb") as f:
            popen = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=f,
                stderr=subprocess.STDOUT,
                env={**self.env, **(env or {})},
                start_new_session=True,  # a Ctrl-C reaches the demo, which stops them in order
            )
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def check(self) -> None:
        """DemoError if a child has exited while the demo still needs it."""
        for proc in self.procs:
            code = proc.popen.poll()
            if code is not None:
                raise DemoError(f"{proc.name} exited with code {code} (see {proc.log.name})")

    def wait_for_file(self, path: Path, proc: Proc, timeout: float) -> str:
        """The stripped content of `path` once `proc` has written it."""
        deadline = time.monotonic() + timeout
        previous = ""
        while time.monotonic() < deadline:
            text = path.read_text() if path.is_file() else ""
            # complete once it ends a line, or has stopped changing since the last poll
            if text.strip() and (text.endswith("\n") or text == previous):
                return text.strip()
            previous = text
            if not proc.alive:
                raise DemoError(
                    f"{proc.name} exited with code {proc.popen.returncode} before writing {path.name}"
                )
            time.sleep(POLL)
        raise DemoError(f"{proc.name} did not write {path} within {timeout:g}s")

    def stop(self, procs: list[Proc], timeout: float) -> None:
        """SIGTERM, wait up to `timeout`, then SIGKILL what is left."""
        for proc in procs:
            if proc.alive:
                proc.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in procs:
            try:
                proc.popen.wait(timeout=max(deadline - time.monotonic(), 0.01))
            except subprocess.TimeoutExpired:
                proc.popen.kill()
                proc.popen.wait()

    def stop_all(self, timeout: float = 20.0) -> None:
        """Workers first (they drain and report), then the coordinator."""
        workers = [p for p in self.procs if p.name != "coordinator"]
        self.stop(workers, timeout)
        self.stop([p for p in self.procs if p.name == "coordinator"], timeout)

    def tails(self, lines: int = 25) -> list[tuple[str, str]]:
        """(log name, its last lines) for every child."""
        out: list[tuple[str, str]] = []
        for proc in self.procs:
            try:
                text = proc.log.read_text(errors="replace")
            except OSError:
                continue
            out.append((proc.log.name, "\n".join(text.splitlines()[-lines:])))
        return out
