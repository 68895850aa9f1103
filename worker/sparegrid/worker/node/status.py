"""`sparegrid worker status`: the daemon answers on a local socket with a JSON snapshot.

The socket (DATA_DIR/status.sock by default, mode 0600) answers every connection with one
JSON object and closes; nothing is read from the client, so it cannot be made to do
anything. `render` turns a snapshot into the table the command prints, `status_line`
into the one line `worker run` keeps up to date on a terminal.
"""

import asyncio
import contextlib
import json
import logging
import os
import socket
from collections import deque
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

_log = logging.getLogger("sparegrid.worker.node.status")
MAX_SOCKET_PATH = 107  # sockaddr_un.sun_path less the terminating NUL
Snapshot = dict[str, Any]


class StatusUnavailable(Exception):
    """No daemon answers on the socket; the message says what to do."""


class StatusServer:
    def __init__(self, path: Path, snapshot: Callable[[], Snapshot]) -> None:
        self.path = path
        self._snapshot = snapshot
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> str:
        """Starts listening; returns "" or why the status socket is not available."""
        if len(os.fsencode(self.path)) > MAX_SOCKET_PATH:
            return f"status socket path {self.path} is too long; set --status-socket"
        with contextlib.suppress(FileNotFoundError):
            if self.path.is_socket():
                self.path.unlink()  # left by a daemon that did not stop cleanly
        self.path.parent.mkdir(parents=True, exist_ok=True)
        old_umask = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(self._answer, path=str(self.path))
        except OSError as exc:
            return f"cannot listen on {self.path}: {exc}"
        finally:
            os.umask(old_umask)
        return ""

    async def _answer(self, _: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(json.dumps(self._snapshot(), default=str).encode() + b"\n")
            await writer.drain()
        except Exception:  # a client that hung up, or a bug in the snapshot: keep serving
            _log.debug("status request failed", exc_info=True)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()


def read_status(path: Path, timeout: float = 5.0) -> Snapshot:
    """Asks the daemon listening on `path`; raises StatusUnavailable saying why not."""
    hint = "is `sparegrid worker run` running with this --data-dir (or --status-socket)?"
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(path))
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
        f"credit earned: {credit.get('today', 0)} today, {credit.get('total', 0)} in total "
        f"({credit.get('results', 0)} results accepted)",
        f"work windows: {snapshot.get('windows')}; GPU readings: {snapshot.get('device_state')}; "
        f"keyboard and mouse: {snapshot.get('user_input', 'none')}",
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


def status_line(snapshot: Snapshot) -> str:
    """One line for a terminal: each device's state and the credit earned today."""
    devices = " | ".join(
        f"{d['index']}: {d['state']}" + (f" {d['tasks'][0]['kind']}" if d.get("tasks") else "")
        for d in snapshot.get("devices", [])
    )
    credit = snapshot.get("credit", {})
    link = "" if snapshot.get("connected") else " | not connected"
    return (
        f"{devices} | credit today {credit.get('today', 0)}, total {credit.get('total', 0)}{link}"
    )
