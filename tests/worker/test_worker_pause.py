"""`sparegrid worker pause|snooze|resume`: the volunteer stops lending without a restart.

A pause preempts running work as PREEMPTED (re-queued, not held against the node) and
stops new leases; it ends by itself at its deadline, or with `resume`; a restarted daemon
keeps it; anything on the status socket other than a well-formed command is refused with
an error and changes nothing."""

import asyncio
import json
import socket
import stat
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from sparegrid.cli.main import main
from sparegrid.wire.clock import FakeClock, SystemClock
from sparegrid.worker.node.status import read_status, render, send_command
from sparegrid.worker.policy import DevicePolicy, DeviceState, Mode, PolicySettings
from sparegrid.worker.policy.pause import ManualPause
from sparegrid.worker.testing import (
    FakeCoordinator,
    FakeSession,
    assignment,
    is_kind,
    make_config,
    running_worker,
    wait_until,
)

LONG = {"data": "slow", "sleep_ms": 30_000}
PAUSED = "paused: by the volunteer"


class WallClock(SystemClock):
    """Fake wall time for the pause's deadline; the daemon's loops run on real time."""

    def __init__(self, start: datetime) -> None:
        self._wall = start.timestamp()

    def advance(self, seconds: float) -> None:
        self._wall += seconds

    def now(self) -> float:
        return self._wall


def config(tmp_path: Path, coordinator: FakeCoordinator) -> Any:
    return make_config(tmp_path, coordinator.address, idle_seconds=0, poll_interval=0.02)


async def ask(path: Path, command: dict[str, Any]) -> dict[str, Any]:
    return await asyncio.to_thread(send_command, path, command)


async def raw(path: Path, data: bytes, hang_up: bool = True) -> dict[str, Any]:
    """What the daemon answers to these bytes, sent as they are (then, unless `hang_up`
    is False, the end of what the client sends: else the daemon waits for more)."""

    def exchange() -> dict[str, Any]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(str(path))
            sock.sendall(data)
            if hang_up:
                sock.shutdown(socket.SHUT_WR)
            answer = b""
            while chunk := sock.recv(1 << 16):
                answer += chunk
        return dict(json.loads(answer))

    return await asyncio.to_thread(exchange)


def grants(session: FakeSession) -> int:
    return len([m for m in session.of_kind("credit") if not m.credit.reset])


async def test_pause_preempts_running_work_stops_leasing_and_resume_lifts_it(
    tmp_path: Path, coordinator: FakeCoordinator
) -> None:
    sock = tmp_path / "status.sock"
    async with running_worker(config(tmp_path, coordinator)) as (worker, _):
        session = await coordinator.session()
        await session.wait_for(is_kind("credit"))
        session.assign(assignment("long", params=LONG))
        await wait_until(lambda: worker.attempt_phases().get("long") == "running")
        answer = await ask(sock, {"pause": None})
        assert answer["ok"] and "worker resume" in answer["pause"]["reason"]
        [failure] = await session.wait_failures(1)
        assert (failure.attempt_id, failure.code, failure.retryable) == ("long", "PREEMPTED", True)
        assert PAUSED in failure.message
        await session.wait_for(lambda m: m.WhichOneof("body") == "credit" and m.credit.reset)
        # work sent before the coordinator heard of the pause is handed straight back
        session.assign(assignment("late", params={"data": "x"}))
        [_, late] = await session.wait_failures(2)
        assert (late.attempt_id, late.code) == ("late", "PREEMPTED")
        granted = grants(session)
        await asyncio.sleep(0.3)  # many polls: still paused, nothing invited
        assert grants(session) == granted
        shown = (await asyncio.to_thread(read_status, sock))["devices"][0]
        assert shown["state"] == PAUSED and "worker resume" in shown["reason"]
        answer = await ask(sock, {"resume": True})
        assert answer == {"ok": True, "was_paused": True, "pause": None}
        await session.wait_for(is_kind("credit"), count=len(session.of_kind("credit")) + 1)
        session.assign(assignment("after"))
        await session.wait_statements(1)
        assert not (tmp_path / "pause.json").exists()


async def test_pause_for_a_while_ends_by_itself_at_its_deadline(
    tmp_path: Path, coordinator: FakeCoordinator
) -> None:
    clock = WallClock(datetime(2026, 12, 7, 20, 0))
    async with running_worker(config(tmp_path, coordinator), clock=clock) as (worker, _):
        session = await coordinator.session()
        await session.wait_for(is_kind("credit"))
        answer = await ask(tmp_path / "status.sock", {"pause": 7200})
        assert answer["pause"]["until"] == "2026-12-07T22:00:00"
        await wait_until(lambda: worker.status()["devices"][0]["state"] == PAUSED)
        assert "until 22:00" in worker.status()["devices"][0]["reason"]
        assert "paused by the volunteer: yes, until 22:00" in render(worker.status())
        clock.advance(7199)
        await asyncio.sleep(0.2)
        assert worker.status()["devices"][0]["state"] == PAUSED
        before = len(session.of_kind("credit"))
        clock.advance(1)  # 22:00: the pause is over, work is invited again
        await session.wait_for(is_kind("credit"), count=before + 1)
        assert worker.status()["pause"] is None
        assert not (tmp_path / "pause.json").exists()


def test_the_pause_comes_before_the_other_rules_and_restarts_the_owner_idle_timer() -> None:
    policy = DevicePolicy(0, PolicySettings(idle_seconds=60, max_temp=80.0))
    hot, cool = DeviceState(0, temperature=90.0), DeviceState(0, temperature=50.0)

    def mode(state: DeviceState, mono: float, paused: str = "", window: float = 1e9) -> Mode:
        return policy.evaluate(state, lambda pid: False, False, mono, window, None, paused).mode

    assert mode(cool, 0.0) is Mode.WAITING
    decision = policy.evaluate(hot, lambda pid: False, True, 30.0, 0.0, None, "until 22:00")
    assert (decision.mode, decision.reason, decision.may_work) == (
        Mode.PAUSED,
        "until 22:00",
        False,
    )
    assert mode(cool, 61.0) is Mode.WAITING  # the owner's 60 s start when the pause ends
    assert mode(cool, 120.0) is Mode.WAITING
    assert mode(cool, 121.0) is Mode.READY


def test_a_pause_ends_at_its_deadline_and_is_kept_on_disk(tmp_path: Path) -> None:
    clock = FakeClock(datetime(2026, 12, 7, 23, 30))
    pause = ManualPause(tmp_path / "pause.json", clock)
    assert pause.reason() == ""
    pause.pause(3600)
    assert pause.reason() == "until Tue 08 Dec 00:30, or `sparegrid worker resume`"
    again = ManualPause(tmp_path / "pause.json", clock)  # a restart: still paused
    assert again.reason() == pause.reason()
    clock.advance(3599)
    assert again.reason()
    clock.advance(1)
    assert again.reason() == "" and not (tmp_path / "pause.json").exists()
    assert ManualPause(tmp_path / "pause.json", clock).reason() == ""
    pause.pause(None)
    clock.advance(400 * 86400)
    assert ManualPause(tmp_path / "pause.json", clock).reason() == (
        "until `sparegrid worker resume`"
    )


@pytest.mark.parametrize("saved", [b"{", b'{"until": "soon"}', b'{"until": NaN}', b"[]"])
def test_an_unreadable_pause_file_is_ignored(tmp_path: Path, saved: bytes) -> None:
    (tmp_path / "pause.json").write_bytes(saved)
    assert ManualPause(tmp_path / "pause.json", FakeClock()).reason() == ""


async def test_a_restarted_worker_stays_paused(
    tmp_path: Path, coordinator: FakeCoordinator
) -> None:
    async with running_worker(config(tmp_path, coordinator)):
        await coordinator.session()
        await ask(tmp_path / "status.sock", {"pause": None})
    async with running_worker(config(tmp_path, coordinator)) as (worker, _):
        session = await coordinator.session(2)
        assert worker.status()["devices"][0]["state"] == PAUSED
        await asyncio.sleep(0.3)
        assert grants(session) == 0  # paused from its first poll: nothing invited
        session.assign(assignment("early"))
        [failure] = await session.wait_failures(1)
        assert failure.code == "PREEMPTED" and PAUSED in failure.message
        await ask(tmp_path / "status.sock", {"resume": True})
        await session.wait_for(is_kind("credit"))


BAD = [
    b"garbage\n",
    b"\xff\xfe\n",
    b"[1]\n",
    b'{"pause": -5}\n',
    b'{"pause": 0}\n',
    b'{"pause": true}\n',
    b'{"pause": "2h"}\n',
    b'{"pause": NaN}\n',
    b'{"pause": 1e400}\n',
    b'{"pause": 99999999999}\n',
    b'{"resume": false}\n',
    b'{"resume": true, "pause": 10}\n',
    b'{"shutdown": true}\n',
    b'{"pause": 10' + b" " * 400 + b"}\n",
    b'{"resume": true}\n{"pause": null}\n',
]


async def test_malformed_commands_change_nothing_and_the_daemon_keeps_serving(
    tmp_path: Path, coordinator: FakeCoordinator
) -> None:
    sock = tmp_path / "status.sock"
    async with running_worker(config(tmp_path, coordinator)) as (worker, _):
        session = await coordinator.session()
        session.assign(assignment("long", params=LONG))
        await wait_until(lambda: worker.attempt_phases().get("long") == "running")
        assert stat.S_IMODE(sock.stat().st_mode) == 0o600
        for data in BAD:
            answer = await raw(sock, data)
            assert set(answer) == {"error"}, data
            assert not worker.pause.paused and not (tmp_path / "pause.json").exists()
        assert "pause" in (await raw(sock, b'{"pause": -5}'))["error"]
        assert "one line of JSON" in (await raw(sock, b'{"pause": 6', hang_up=False))["error"]
        assert "devices" in await raw(sock, b"", hang_up=False)  # silent client: the status
        await asyncio.sleep(0.1)
        assert worker.attempt_phases().get("long") == "running"
        assert session.failures() == []
        assert (await asyncio.to_thread(read_status, sock))["devices"][0]["state"] == "working"
        assert (await raw(sock, b'{"pause": 60}'))["ok"]  # no newline: still one command
        [failure] = await session.wait_failures(1)
        assert failure.code == "PREEMPTED"


def sparegrid(*args: str) -> subprocess.CompletedProcess[str]:
    command = [str(Path(sys.executable).parent / "sparegrid"), "worker", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


async def test_cli_pause_snooze_resume_against_a_running_worker(
    tmp_path: Path, coordinator: FakeCoordinator, capsys: pytest.CaptureFixture[str]
) -> None:
    data = ["--data-dir", str(tmp_path)]
    async with running_worker(config(tmp_path, coordinator)) as (worker, _):
        await coordinator.session()
        done = await asyncio.to_thread(sparegrid, "pause", "--for", "2h", *data)
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("paused until ") and "no new work" in done.stdout
        assert worker.pause.until is not None
        assert abs(worker.pause.until - (SystemClock().now() + 7200)) < 60
        done = await asyncio.to_thread(sparegrid, "status", *data)
        assert "paused by the volunteer: yes, until" in done.stdout
        assert await asyncio.to_thread(main, ["worker", "resume", *data]) == 0
        assert "resumed" in capsys.readouterr().out and not worker.pause.paused
        assert await asyncio.to_thread(main, ["worker", "resume", *data]) == 0
        assert "was not paused" in capsys.readouterr().out
        assert await asyncio.to_thread(main, ["worker", "snooze", *data]) == 0
        assert worker.pause.until is not None
        assert abs(worker.pause.until - (SystemClock().now() + 3600)) < 60
        assert await asyncio.to_thread(main, ["worker", "pause", *data]) == 0
        assert worker.pause.paused and worker.pause.until is None
        await asyncio.to_thread(main, ["worker", "resume", *data])
        capsys.readouterr()
        for command, bad, why in (
            ("pause", ["--for=-2h"], "must be more than 0 seconds: give a duration like 90m"),
            # argparse took "-1h" for an option: "expected one argument"
            ("pause", ["--for", "-1h"], "must be more than 0 seconds: give a duration like"),
            ("snooze", ["--for", "-.5d"], "must be more than 0 seconds"),
            ("pause", ["--for", "-30"], "must be more than 0 seconds"),
            ("pause", ["--for=0"], "must be more than 0 seconds: give one like 90m, 2h or 1d"),
            ("pause", ["--for", "soon"], "is not a duration like 3d, 24h, 90m or 300"),
            ("pause", ["--for=400d"], "must be at most 366 days"),
        ):
            code = await asyncio.to_thread(main, ["worker", command, *bad, *data])
            err = capsys.readouterr().err
            assert code == 2 and err.startswith("error: --for ") and why in err, (bad, err)
            assert err.count("\n") == 1 and err.endswith("; nothing was paused\n"), err
            assert not worker.pause.paused


def test_cli_pause_with_no_worker_running(tmp_path: Path) -> None:
    for command in ("pause", "snooze", "resume"):
        done = sparegrid(command, "--data-dir", str(tmp_path))
        assert done.returncode == 1
        assert "no worker status socket" in done.stderr and "worker run" in done.stderr
    assert not (tmp_path / "pause.json").exists()
