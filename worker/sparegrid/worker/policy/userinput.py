"""How long ago the desktop user last touched the keyboard or mouse, where the platform says.

Two readers, tried in this order by `make_input_idle("auto")`:

- X11: the XScreenSaver extension's idle time (libX11 + libXss through ctypes), when the
  worker runs in the user's X session (DISPLAY is set);
- systemd-logind: the IdleHint of the active graphical session (`loginctl`), which desktops
  such as GNOME and KDE keep, also under Wayland and for a worker running as a service.

Neither is available on a headless server, and then the rule is off: GPU readings alone
decide. None means "cannot tell".
"""

import ctypes
import ctypes.util
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from typing import Protocol


class InputIdle(Protocol):
    name: str

    def seconds_idle(self) -> float | None: ...


class NoInput:
    name = "none"

    def seconds_idle(self) -> float | None:
        return None


class _XScreenSaverInfo(ctypes.Structure):
    _fields_ = [
        ("window", ctypes.c_ulong),
        ("state", ctypes.c_int),
        ("kind", ctypes.c_int),
        ("til_or_since", ctypes.c_ulong),
        ("idle", ctypes.c_ulong),  # milliseconds since the last input
        ("event_mask", ctypes.c_ulong),
    ]


class X11Idle:
    """XScreenSaverQueryInfo on the display in DISPLAY; raises OSError if unusable."""

    name = "x11"

    def __init__(self) -> None:
        if not os.environ.get("DISPLAY"):
            raise OSError("DISPLAY is not set")
        x11_name, xss_name = ctypes.util.find_library("X11"), ctypes.util.find_library("Xss")
        if not x11_name or not xss_name:
            raise OSError("libX11 or libXss is not installed")
        self._x11 = ctypes.CDLL(x11_name)
        self._xss = ctypes.CDLL(xss_name)
        self._x11.XOpenDisplay.restype = ctypes.c_void_p
        self._x11.XDefaultRootWindow.argtypes = [ctypes.c_void_p]
        self._x11.XDefaultRootWindow.restype = ctypes.c_ulong
        self._xss.XScreenSaverAllocInfo.restype = ctypes.POINTER(_XScreenSaverInfo)
        self._xss.XScreenSaverQueryInfo.argtypes = [
            ctypes.c_void_p,
            ctypes.c_ulong,
            ctypes.POINTER(_XScreenSaverInfo),
        ]
        self._display = self._x11.XOpenDisplay(None)
        if not self._display:
            raise OSError(f"cannot open X display {os.environ.get('DISPLAY')}")
        self._info = self._xss.XScreenSaverAllocInfo()

    def seconds_idle(self) -> float | None:
        root = self._x11.XDefaultRootWindow(self._display)
        if not self._xss.XScreenSaverQueryInfo(self._display, root, self._info):
            return None
        return float(self._info.contents.idle) / 1000.0


Run = Callable[[list[str]], str]


def _run(command: list[str]) -> str:
    done = subprocess.run(command, capture_output=True, text=True, timeout=5, check=True)
    return done.stdout


class LogindIdle:
    """The IdleHint of the active graphical session, read at most every `refresh` seconds
    (it is a subprocess call); the idle time in between is extrapolated."""

    name = "logind"

    def __init__(
        self,
        run: Run = _run,
        monotonic: Callable[[], float] = time.monotonic,
        refresh: float = 2.0,
    ) -> None:
        if run is _run and shutil.which("loginctl") is None:
            raise OSError("loginctl is not installed")
        self._run = run
        self._monotonic = monotonic
        self._refresh = refresh
        self._read_at = -1e18
        self._idle: float | None = None
        self._query()  # raises OSError if logind does not answer
        self._read_at = monotonic()

    def _query(self) -> float | None:
        try:
            listing = self._run(["loginctl", "list-sessions", "--no-legend"])
        except (OSError, subprocess.SubprocessError) as exc:
            raise OSError(f"loginctl does not answer ({exc})") from None
        self._idle = None
        for line in listing.splitlines():
            if not line.split():
                continue
            session = line.split()[0]
            wanted = ["Type", "Active", "IdleHint", "IdleSinceHintMonotonic"]
            command = ["loginctl", "show-session", session]
            props = _properties(self._run(command + [f"--property={p}" for p in wanted]))
            if props.get("Type") not in ("x11", "wayland") or props.get("Active") != "yes":
                continue
            if props.get("IdleHint") != "yes":
                self._idle = 0.0  # in use now
                return self._idle
            since = int(props.get("IdleSinceHintMonotonic", "0") or 0) / 1e6
            self._idle = (
                max(time.clock_gettime(time.CLOCK_MONOTONIC) - since, 0.0) if since else None
            )
        return self._idle

    def seconds_idle(self) -> float | None:
        now = self._monotonic()
        if now - self._read_at >= self._refresh:
            try:
                self._query()
            except OSError:
                self._idle = None
            self._read_at = now
            return self._idle
        if self._idle is None:
            return None
        return self._idle + (now - self._read_at) if self._idle > 0 else 0.0


def _properties(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def make_input_idle(spec: str) -> tuple[InputIdle, str]:
    """The reader `spec` names (auto, x11, logind, none), and why "auto" found none."""
    if spec == "none":
        return NoInput(), ""
    reasons = []
    for name, make in (("x11", X11Idle), ("logind", LogindIdle)):
        if spec not in ("auto", name):
            continue
        try:
            return make(), ""
        except OSError as exc:
            reasons.append(f"{name}: {exc}")
    return NoInput(), "keyboard and mouse idle time unavailable (" + "; ".join(reasons) + ")"
