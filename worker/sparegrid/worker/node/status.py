"""`sparegrid worker status`: the daemon answers on a local socket with a JSON snapshot.

The socket (DATA_DIR/status.sock by default, mode 0600: only the volunteer's own user can
connect) answers every connection with one JSON object and closes. A client that sends
nothing gets the snapshot. A client may instead send one line of at most
`MAX_COMMAND` bytes holding exactly one command, `{"pause": SECONDS}` (`null`: until
resumed) or `{"resume": true}`; the daemon answers `{"ok": true, "pause": ...}`, or
`{"error": "..."}` and changes nothing for anything else. `render` turns a snapshot into the table the command prints, `status_line`
into the one line `worker run` keeps up to date on a terminal.
"""

import asyncio
import contextlib
import json
import logging
import os
import socket
import tempfile
from collections import deque
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

_log = logging.getLogger("sparegrid.worker.node.status")
MAX_SOCKET_PATH = 107  # sockaddr_un.sun_path less the terminating NUL
MAX_COMMAND = 256  # bytes of one command line
READ_TIMEOUT = 1.0  # seconds a client has to send its command (or nothing)
Snapshot = dict[str, Any]
Command = Callable[[Snapshot], Snapshot]  # a checked command -> its answer


class CommandError(ValueError):
    """A command the daemon refuses; the message says what was wrong."""


def parse_command(line: bytes) -> Snapshot:
    """The one command a line holds; raises CommandError for anything else."""
    try:
        command = json.loads(line.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError):
        raise CommandError("the command is not one line of JSON") from None
    if not isinstance(command, dict) or len(command) != 1:
        raise CommandError('the command must be {"pause": SECONDS or null} or {"resume": true}')
    [(name, value)] = command.items()
    if name == "resume" and value is True:
        return command
    if name == "pause" and (
        value is None or (isinstance(value, int | float) and not isinstance(value, bool))
    ):
        return command
    raise CommandError('the command must be {"pause": SECONDS or null} or {"resume": true}')


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number")


class StatusUnavailable(Exception):
    """No daemon answers on the socket; the message says what to do."""


def _private_socket(path: Path) -> socket.socket:
    """A listening socket at `path` that only this user can connect to, made without
    touching the umask (it is the whole process's: an await under a changed umask once
    left it at 0o177 for everything the process created after). It is bound in a fresh
    0700 directory, made 0600 there, then moved into place."""
    staging = Path(tempfile.mkdtemp(prefix=".", dir=path.parent))
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    bound = staging / "s"
    try:
        sock.bind(str(bound))
        os.chmod(bound, 0o600)
        os.replace(bound, path)
        sock.listen(100)
    except OSError:
        sock.close()
        with contextlib.suppress(OSError):
            bound.unlink()
        raise
    finally:
        with contextlib.suppress(OSError):
            os.rmdir(staging)
    return sock


class StatusServer:
    def __init__(
        self, path: Path, snapshot: Callable[[], Snapshot], command: Command | None = None
    ) -> None:
        self.path = path
        self._snapshot = snapshot
        self._command = command
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> str:
        """Starts listening; returns "" or why the status socket is not available."""
        if len(os.fsencode(self.path)) > MAX_SOCKET_PATH:
            return f"status socket path {self.path} is too long; set --status-socket"
        with contextlib.suppress(FileNotFoundError):
            if self.path.is_socket():
                self.path.unlink()  # left by a daemon that did not stop cleanly
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            sock = _private_socket(self.path)
        except OSError as exc:
            return f"cannot listen on {self.path}: {exc}"
        self._server = await asyncio.start_unix_server(self._answer, sock=sock)
        return ""

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await self._read_line(reader)
            answer = self._snapshot() if not line.strip() else self._run(line)
            writer.write(json.dumps(answer, default=str).encode() + b"\n")
            await writer.drain()
        except Exception:  # a client that hung up, or a bug in the snapshot: keep serving
            _log.debug("status request failed", exc_info=True)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    @staticmethod
    async def _read_line(reader: asyncio.StreamReader) -> bytes:
        """What the client sent up to its first newline, its hang-up or READ_TIMEOUT, and
        at most MAX_COMMAND + 1 bytes (refused below as too long)."""
        data = b""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(READ_TIMEOUT):
                while b"\n" not in data and len(data) <= MAX_COMMAND:
                    chunk = await reader.read(MAX_COMMAND + 1 - len(data))
                    if not chunk:
                        break
                    data += chunk
        return data

    def _run(self, line: bytes) -> Snapshot:
        """Checks and runs one command; an error object, and no change, if it is refused."""
        try:
            if len(line) > MAX_COMMAND:
                raise CommandError(f"the command is longer than {MAX_COMMAND} bytes")
            if b"\n" in line.strip():
                raise CommandError("send one command per connection")
            if self._command is None:
                raise CommandError("this socket takes no commands")
            return self._command(parse_command(line))
        except CommandError as exc:
            _log.warning("refused a command on the status socket: %s", exc)
            return {"error": str(exc)}

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()


def read_status(path: Path, timeout: float = 5.0) -> Snapshot:
    """Asks the daemon listening on `path`; raises StatusUnavailable saying why not."""
    return _ask(path, b"", timeout)


def send_command(path: Path, command: Snapshot, timeout: float = 5.0) -> Snapshot:
    """Sends one command to the daemon; its answer. Raises StatusUnavailable if none."""
    return _ask(path, json.dumps(command).encode() + b"\n", timeout)


def _ask(path: Path, request: bytes, timeout: float) -> Snapshot:
    hint = "is `sparegrid worker run` running with this --data-dir (or --status-socket)?"
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(path))
            sock.sendall(request)
            sock.shutdown(socket.SHUT_WR)  # all it has to say: the daemon answers at once
            chunks = []
            while chunk := sock.recv(1 << 16):
                chunks.append(chunk)
    except FileNotFoundError:
        raise StatusUnavailable(f"no worker status socket at {path}; {hint}") from None
    except OSError as exc:
        raise StatusUnavailable(f"cannot reach the worker at {path} ({exc}); {hint}") from None
    try:
        snapshot = json.loads(b"".join(chunks))
    except ValueError:
        raise StatusUnavailable(f"the worker at {path} sent an unreadable answer") from None
    if not isinstance(snapshot, dict):
        raise StatusUnavailable(f"the worker at {path} sent an unreadable answer")
    return snapshot


class RecentErrors(logging.Handler):
    """Keeps the last warnings and errors the worker logged, for the status."""

    def __init__(self, size: int = 10) -> None:
        super().__init__(logging.WARNING)
        self.entries: deque[dict[str, str]] = deque(maxlen=size)

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            when = datetime.fromtimestamp(record.created).isoformat(timespec="seconds")
            self.entries.append({"time": when, "message": record.getMessage()})


def _device_line(device: dict[str, Any]) -> list[str]:
    state = device["state"] + (f" ({device['reason']})" if device.get("reason") else "")
    lines = [f"  {device['index']}  {device['name']:<28} {state}"]
    readings = [
        f"{label} {device[key]:g}{unit}"
        for key, label, unit in (
            ("utilization", "busy", "%"),
            ("temperature", "temp", " C"),
            ("power", "power", " W"),
        )
        if device.get(key) is not None
    ]
    if readings:
        lines.append("     " + ", ".join(readings))
    for task in device.get("tasks", []):
        lines.append(
            f"     task {task['attempt_id']} ({task['kind']}, job {task['job_id']}): "
            f"{task['phase']} for {task['seconds']:.0f}s"
        )
    return lines


def _limits_line(limits: dict[str, Any] | None) -> list[str]:
    """The limits in force (SIGHUP reloads them from the settings file)."""
    if not limits:
        return []
    temp, cap = limits.get("max_temp"), limits.get("power_cap")
    parts = [
        f"idle {limits.get('idle_seconds', 0):g} s before work",
        f"others' GPU use up to {limits.get('max_utilization', 0):g}%",
        f"others' GPU memory up to {limits.get('max_other_memory_mib', 0)} MiB",
        "no temperature limit" if temp is None else f"max temp {temp:g} C",
        "no power cap" if cap is None else f"power cap {cap:g} W",
    ]
    return ["limits in force: " + ", ".join(parts)]


def _standing_line(standing: dict[str, str]) -> list[str]:
    """A line only when the coordinator holds the node back, with its reason."""
    state = standing.get("state") or "active"
    if state == "active":
        return []
    reason = standing.get("reason")
    return [f"standing: {state}" + (f" ({reason})" if reason else "") + ": it gets no work"]


def render(snapshot: Snapshot) -> str:
    """The table `sparegrid worker status` prints."""
    connected = "connected" if snapshot.get("connected") else "not connected"
    draining = ", draining" if snapshot.get("draining") else ""
    credit = snapshot.get("credit", {})
    lines = [
        f"node {snapshot.get('node_id')} ({snapshot.get('name')}), coordinator "
        f"{snapshot.get('coordinator')}: {connected}{draining}",
        *_standing_line(snapshot.get("standing") or {}),
        f"credit: {credit.get('total', 0)} in the coordinator's ledger, "
        f"{credit.get('today', 0):+d} today ({credit.get('accepted', 0)} results accepted; "
        "a result is paid once validated)",
        f"work windows: {snapshot.get('windows')}; GPU readings: {snapshot.get('device_state')}; "
        f"keyboard and mouse: {snapshot.get('user_input', 'none')}",
        f"paused by the volunteer: {_pause(snapshot.get('pause'))}",
        *_limits_line(snapshot.get("limits")),
        "devices:",
    ]
    for device in snapshot.get("devices", []):
        lines += _device_line(device)
    isolation = snapshot.get("isolation") or {}
    lines.append("isolation of tasks:")
    for key in ("network", "filesystem", "limits"):
        lines.append(f"  {key}: {isolation.get(key, 'unknown')}")
    errors = snapshot.get("errors", [])
    lines.append("recent errors:" if errors else "recent errors: none")
    lines += [f"  {e['time']}  {e['message']}" for e in errors]
    return "\n".join(lines)


def _pause(pause: Any) -> str:
    if not isinstance(pause, dict):
        return "no (`sparegrid worker pause` or `snooze` pauses it)"
    return f"yes, {pause.get('reason')}"


def status_line(snapshot: Snapshot) -> str:
    """One line for a terminal: each device's state and the node's credit."""
    devices = " | ".join(
        f"{d['index']}: {d['state']}" + (f" {d['tasks'][0]['kind']}" if d.get("tasks") else "")
        for d in snapshot.get("devices", [])
    )
    credit = snapshot.get("credit", {})
    link = "" if snapshot.get("connected") else " | not connected"
    return f"{devices} | credit: {credit.get('total', 0)} ({credit.get('today', 0):+d} today){link}"
