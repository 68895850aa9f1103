"""The desktop user's keyboard and mouse as a sign the owner is there (where readable)."""

import time

import pytest

from sparegrid.worker.policy import DevicePolicy, DeviceState, Mode, PolicySettings
from sparegrid.worker.policy.userinput import LogindIdle, NoInput, X11Idle, make_input_idle


def mode(input_idle: float | None, limit: float = 300.0) -> Mode:
    policy = DevicePolicy(0, PolicySettings(idle_seconds=0, input_idle_seconds=limit))
    return policy.evaluate(
        DeviceState(0), lambda pid: False, False, 0.0, float("inf"), input_idle
    ).mode


def test_recent_input_means_the_owner_is_there() -> None:
    assert mode(12.0) is Mode.OWNER_ACTIVE
    assert mode(301.0) is Mode.READY
    assert mode(None) is Mode.READY  # cannot tell: GPU readings decide
    assert mode(12.0, limit=0) is Mode.READY  # the rule is off


class FakeLoginctl:
    def __init__(self, idle_hint: str, since_us: int = 0, kind: str = "wayland") -> None:
        self.calls = 0
        self.idle_hint, self.since_us, self.kind = idle_hint, since_us, kind

    def __call__(self, command: list[str]) -> str:
        self.calls += 1
        if command[1] == "list-sessions":
            return "c1 1000 alice seat0 tty2\n7 0 root - pts/0\n"
        if command[2] == "c1":
            return (
                f"Type={self.kind}\nActive=yes\nIdleHint={self.idle_hint}\n"
                f"IdleSinceHintMonotonic={self.since_us}\n"
            )
        return "Type=tty\nActive=yes\nIdleHint=no\n"


def test_logind_reads_the_active_graphical_session() -> None:
    now = [0.0]
    busy = LogindIdle(run=FakeLoginctl("no"), monotonic=lambda: now[0])
    assert busy.seconds_idle() == 0.0
    since = int((time.clock_gettime(time.CLOCK_MONOTONIC) - 120) * 1e6)
    fake = FakeLoginctl("yes", since)
    idle = LogindIdle(run=fake, monotonic=lambda: now[0], refresh=2.0)
    first = idle.seconds_idle()
    assert first is not None and 119 <= first <= 125
    calls = fake.calls
    now[0] += 1.0  # between refreshes: extrapolated, no new subprocess
    assert idle.seconds_idle() == pytest.approx(first + 1.0)
    assert fake.calls == calls


def test_logind_without_a_graphical_session_cannot_tell() -> None:
    assert LogindIdle(run=FakeLoginctl("no", kind="tty")).seconds_idle() is None


def test_unavailable_readers_say_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DISPLAY", raising=False)
    with pytest.raises(OSError, match="DISPLAY is not set"):
        X11Idle()
    reader, note = make_input_idle("x11")
    assert isinstance(reader, NoInput) and "x11: DISPLAY is not set" in note
    reader, note = make_input_idle("none")
    assert isinstance(reader, NoInput) and note == ""
