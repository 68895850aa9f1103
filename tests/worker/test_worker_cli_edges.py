"""The worker at its edges: a reader that leaves the pipe early, `worker credit` without
the owner's key, limits with no sensor to read them, and a node the coordinator holds back."""

import dataclasses
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sparegrid.wire.clock import SystemClock
from sparegrid.worker.node.devices import DeviceInfo
from sparegrid.worker.node.status import StatusUnavailable, read_status, render
from sparegrid.worker.startup import make_monitor
from sparegrid.worker.testing.coordinator import FakeCoordinator
from sparegrid.worker.testing.harness import make_config, running_worker, wait_until


def sparegrid(*args: str) -> list[str]:
    return [sys.executable, "-m", "sparegrid.cli.main", *args]


def clean_env() -> dict[str, str]:
    env = dict(os.environ)
    for name in ("SPAREGRID_OWNER_KEY", "SPAREGRID_API_KEY"):
        env.pop(name, None)
    return env


def test_a_reader_that_leaves_early_gets_no_broken_pipe_error(tmp_path: Path) -> None:
    """`sparegrid worker id | head -0`: the pipe is closed before anything is written."""
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the command writes
    try:
        done = subprocess.run(
            sparegrid("worker", "id", "--data-dir", str(tmp_path / "node")),
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    finally:
        os.close(write)
    assert "Traceback" not in done.stderr and "Broken pipe" not in done.stderr, done.stderr
    assert "BrokenPipeError" not in done.stderr
    assert done.returncode == 141  # 128 + SIGPIPE, as cat and the shell report it


def test_worker_credit_without_a_key_names_both_ways_to_give_it(tmp_path: Path) -> None:
    done = subprocess.run(
        sparegrid("worker", "credit", "--data-dir", str(tmp_path / "node")),
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=60,
    )
    assert done.returncode == 2
    assert "--owner-key-file" in done.stderr and "SPAREGRID_OWNER_KEY" in done.stderr
    assert "api_key=" not in done.stderr  # words of the CLI, not of the SDK


@pytest.mark.parametrize("content", [None, ""])
def test_worker_credit_with_a_bad_key_file_says_which_file(
    tmp_path: Path, content: str | None
) -> None:
    key_file = tmp_path / "owner.key"
    if content is not None:
        key_file.write_text(content)
    done = subprocess.run(
        sparegrid(
            "worker",
            "credit",
            "--data-dir",
            str(tmp_path / "node"),
            "--owner-key-file",
            str(key_file),
            "--coordinator",
            "127.0.0.1:9",
        ),
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=60,
    )
    assert done.returncode == 2
    if content is None:
        assert "--owner-key-file" in done.stderr and f"{key_file}: No such file" in done.stderr
    else:  # an empty file is no key
        assert "no owner key" in done.stderr


def test_an_owner_key_file_others_can_read_is_warned_of(tmp_path: Path) -> None:
    key_file = tmp_path / "owner.key"
    key_file.write_text("sg_not-a-real-key\n")
    key_file.chmod(0o644)
    args = ["--owner-key-file", str(key_file), "--coordinator", "127.0.0.1:9"]

    def credit() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            sparegrid("worker", "credit", "--data-dir", str(tmp_path / "node"), *args),
            capture_output=True,
            text=True,
            env=clean_env(),
            timeout=60,
        )

    done = credit()
    assert f"owner key file {key_file} is readable by other users (mode 644)" in done.stderr
    assert f"chmod 600 {key_file}" in done.stderr
    key_file.chmod(0o600)
    again = credit()
    assert "readable by other users" not in again.stderr


@pytest.mark.parametrize("limit", [{"max_temp": 80.0}, {"power_cap": 150.0}])
def test_a_heat_or_power_limit_without_a_sensor_says_it_does_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, limit: dict[str, float]
) -> None:
    cpu = DeviceInfo(index=0, kind="cpu", name="test CPU", memory_bytes=1 << 30)
    config = make_config(tmp_path, "127.0.0.1:9", **limit)
    with caplog.at_level(logging.WARNING, logger="sparegrid.worker"):
        make_monitor(config, [cpu], None, SystemClock(), set, lambda index: False)
    flag = "--max-temp" if "max_temp" in limit else "--power-cap"
    assert any(flag in r.message and "does nothing" in r.message for r in caplog.records)


def test_no_limit_no_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cpu = DeviceInfo(index=0, kind="cpu", name="test CPU", memory_bytes=1 << 30)
    with caplog.at_level(logging.WARNING, logger="sparegrid.worker"):
        make_monitor(
            make_config(tmp_path, "127.0.0.1:9"),
            [cpu],
            None,
            SystemClock(),
            set,
            lambda index: False,
        )
    assert not any("does nothing" in r.message for r in caplog.records)


async def test_a_node_held_back_says_so_in_its_status_and_log(
    coordinator: FakeCoordinator, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    coordinator.standing = ("quarantined", "3 invalid results; last: outvoted on task t-0")
    config = make_config(tmp_path, coordinator.address)
    with caplog.at_level(logging.WARNING, logger="sparegrid.worker"):
        async with running_worker(config) as (worker, _):
            await wait_until(lambda: worker.connected)
            snapshot = worker.status()
    assert snapshot["standing"] == {"state": "quarantined", "reason": coordinator.standing[1]}
    assert "standing: quarantined (3 invalid results; last: outvoted on task t-0)" in render(
        snapshot
    )
    assert any("is quarantined and gets no work" in r.message for r in caplog.records)


async def test_an_active_node_shows_no_standing_line(
    coordinator: FakeCoordinator, tmp_path: Path
) -> None:
    async with running_worker(make_config(tmp_path, coordinator.address)) as (worker, _):
        await wait_until(lambda: worker.connected)
        snapshot = worker.status()
    assert snapshot["standing"]["state"] == "active" and "standing:" not in render(snapshot)


async def test_reload_takes_new_limits_into_force_and_names_the_rest(
    coordinator: FakeCoordinator, tmp_path: Path
) -> None:
    config = make_config(tmp_path, coordinator.address)
    async with running_worker(config) as (worker, _):
        await wait_until(lambda: worker.connected)
        fresh = dataclasses.replace(config, max_temp=75.0, idle_seconds=30.0, name="renamed")
        applied, later = worker.reload(fresh)
        snapshot = worker.status()
    assert sorted(applied) == ["idle_seconds", "max_temp"] and later == ["name"]
    assert snapshot["limits"]["max_temp"] == 75.0 and snapshot["name"] == "test-node"
    assert "max temp 75 C" in render(snapshot)


def test_sighup_rereads_the_settings_file(tmp_path: Path) -> None:
    """A real `worker run`: the file's max_temp changes, SIGHUP, and status shows it; a
    broken file leaves the limits in force."""
    settings = tmp_path / "worker.toml"
    settings.write_text("max_temp = 80\n")
    data = tmp_path / "node"
    cmd = sparegrid(
        "worker",
        "run",
        "--config",
        str(settings),
        "--data-dir",
        str(data),
        "--coordinator",
        "127.0.0.1:9",
        "--sandbox",
        "off",
        "--devices",
        "cpu",
    )
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def limit() -> object:
        try:
            return read_status(data / "status.sock")["limits"]["max_temp"]
        except StatusUnavailable:
            return None

    try:
        deadline = time.monotonic() + 60
        while limit() != 80 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert limit() == 80
        settings.write_text("max_temp = 70\n")
        proc.send_signal(signal.SIGHUP)
        while limit() != 70 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert limit() == 70
        settings.write_text("max_temp = 'hot'\n")
        proc.send_signal(signal.SIGHUP)
        time.sleep(1.0)
        assert limit() == 70 and proc.poll() is None  # kept, and still running
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert "settings not reloaded, the limits in force stay" in err and "max_temp" in err


def test_a_second_worker_on_the_same_data_dir_is_refused(tmp_path: Path) -> None:
    """Two workers on one data directory would be one node twice: each would end the
    other's session, and the second's exit would take the first's status socket with it."""
    data = tmp_path / "node"
    run = ("worker", "run", "--devices", "cpu", "--data-dir", str(data))
    run += ("--coordinator", "127.0.0.1:9")  # nothing there: the first keeps trying
    first = subprocess.Popen(
        sparegrid(*run), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=clean_env()
    )
    try:
        deadline = time.monotonic() + 60
        while not (data / "status.sock").exists():
            assert time.monotonic() < deadline and first.poll() is None, "the first did not start"
            time.sleep(0.1)
        second = subprocess.run(
            sparegrid(*run), capture_output=True, text=True, env=clean_env(), timeout=60
        )
        assert second.returncode == 2
        assert f"another worker (pid {first.pid}) is running with data directory {data}" in (
            second.stderr
        )
        assert "Traceback" not in second.stderr
        assert read_status(data / "status.sock")["node_id"]  # the first still answers
    finally:
        first.send_signal(signal.SIGINT)
        first.wait(timeout=60)
    assert first.returncode == 0


def test_a_coordinator_never_reached_is_said_so_not_a_lost_session(tmp_path: Path) -> None:
    """A mistyped address on the first start: no session was ever there to lose."""
    run = ("worker", "run", "--devices", "cpu", "--data-dir", str(tmp_path / "node"))
    worker = subprocess.Popen(
        sparegrid(*run, "--coordinator", "127.0.0.1:9"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(),
    )
    assert worker.stderr is not None
    try:
        deadline = time.monotonic() + 60
        line = ""
        while "trying again" not in line and "reconnecting" not in line:
            assert time.monotonic() < deadline and worker.poll() is None
            line = worker.stderr.readline()
    finally:
        worker.send_signal(signal.SIGINT)
        worker.communicate(timeout=60)
    assert "cannot connect to the coordinator at 127.0.0.1:9 (UNAVAILABLE" in line, line
    assert "session lost" not in line
