"""A worker whose disk fills: it stops lending instead of losing results.

Before, a batch the outbox could not write was logged and dropped ("its tasks are lost"):
the worker went on taking tasks, ran them and lost every result, each task's lease running
out before anyone else got it. Now a worker below `--min-free-disk` of free space, or whose
outbox write failed for want of room, pauses every device ("paused: disk low"), and a
result it could not write is kept, still held, and sent once there is room."""

import errno
import os
from pathlib import Path
from typing import Any

import pytest

from sparegrid.wire.clock import FakeClock
from sparegrid.wire.receipt import decode_statement
from sparegrid.worker.fsutil import write_atomic
from sparegrid.worker.policy import DevicePolicy, DeviceState, Mode, PolicySettings
from sparegrid.worker.policy import disk as disk_module
from sparegrid.worker.policy.disk import DiskGuard
from sparegrid.worker.testing import (
    FakeCoordinator,
    FakeSession,
    assignment,
    is_kind,
    make_config,
    running_worker,
    wait_until,
)
from sparegrid.worker.upstream import batcher as batcher_module
from sparegrid.worker.upstream import outbox as outbox_module

DISK_LOW = "paused: disk low"
LONG = {"data": "slow", "sleep_ms": 30_000}


def config(tmp_path: Path, coordinator: FakeCoordinator, **overrides: Any) -> Any:
    return make_config(
        tmp_path, coordinator.address, idle_seconds=0, poll_interval=0.02, **overrides
    )


def grants(session: FakeSession) -> int:
    return len([m for m in session.of_kind("credit") if not m.credit.reset])


def state(worker: Any) -> tuple[str, str]:
    device = worker.status()["devices"][0]
    return device["state"], device["reason"]


async def test_a_worker_below_its_free_disk_floor_lends_nothing_until_there_is_room(
    tmp_path: Path, coordinator: FakeCoordinator
) -> None:
    floor = 1 << 60  # more than any disk has free
    async with running_worker(config(tmp_path, coordinator, min_free_disk=floor)) as (w, _):
        session = await coordinator.session()
        await wait_until(lambda: state(w)[0] == DISK_LOW)
        assert "free on the disk holding" in state(w)[1] and "--min-free-disk" in state(w)[1]
        assert grants(session) == 0  # nothing invited
        session.assign(assignment("early"))  # sent before the coordinator heard: handed back
        [failure] = await session.wait_failures(1)
        assert (failure.code, failure.retryable) == ("PREEMPTED", True)
        assert DISK_LOW in failure.message
        w.disk.min_free = 0  # room again
        await session.wait_for(is_kind("credit"))
        session.assign(assignment("after"))
        await session.wait_statements(1)


async def test_a_result_the_outbox_cannot_write_is_kept_and_sent_once_there_is_room(
    tmp_path: Path, coordinator: FakeCoordinator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(batcher_module, "RETRY_SECONDS", 0.2)
    monkeypatch.setattr(disk_module, "RETRY_SECONDS", 0.5)
    full = True
    real = outbox_module.write_atomic

    def writing(path: Path, data: bytes, mode: int = 0o600) -> None:
        if full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real(path, data, mode)

    monkeypatch.setattr(outbox_module, "write_atomic", writing)
    async with running_worker(config(tmp_path, coordinator, min_free_disk=0)) as (w, _):
        session = await coordinator.session()
        await session.wait_for(is_kind("credit"))
        session.assign(assignment("first"))
        await wait_until(lambda: state(w)[0] == DISK_LOW)
        assert "No space left on device" in state(w)[1], state(w)
        # a task sent meanwhile is handed back: its failure waits with the result, unwritten
        session.assign(assignment("slow", params=LONG))
        await wait_until(lambda: sorted(w._held()) == ["first", "slow"])
        await wait_until(lambda: w.attempt_phases() == {})
        assert session.statements() == [] and session.failures() == []
        full = False  # room again: the result and the failure go out, each once
        [statement] = await session.wait_statements(1)
        [failure] = await session.wait_failures(1)
        assert failure.attempt_id == "slow" and failure.code == "PREEMPTED"
        assert decode_statement(statement).attempt_id == "first"
        await wait_until(lambda: state(w)[0] != DISK_LOW)  # lending again
        await wait_until(lambda: w._held() == [])  # both acknowledged


def test_a_guard_pauses_below_its_floor_and_for_a_while_after_a_write_without_room(
    tmp_path: Path,
) -> None:
    free = [10 << 30]
    clock = FakeClock()

    class Usage:
        @property
        def free(self) -> int:
            return free[0]

    guard = DiskGuard(tmp_path, 1 << 30, clock, usage=lambda path: Usage())
    assert guard.reason() == ""
    free[0] = 300 << 20
    assert guard.reason() == (
        f"300.0 MiB free on the disk holding {tmp_path}, under --min-free-disk 1.0 GiB: "
        "make room, or lower it"
    )
    free[0] = 10 << 30
    assert guard.failed(OSError(errno.EIO, "I/O error")) is False  # not for want of room
    assert guard.reason() == ""
    assert guard.failed(OSError(errno.ENOSPC, "No space left on device")) is True
    assert guard.reason().startswith(f"writing under {tmp_path} failed: No space left")
    clock.advance(disk_module.RETRY_SECONDS)
    assert guard.reason() == ""  # the disk says there is room: tried again


def test_a_low_disk_comes_after_the_volunteers_pause_and_before_the_gpu_rules() -> None:
    policy = DevicePolicy(0, PolicySettings(idle_seconds=0, max_temp=80.0))
    hot = DeviceState(0, temperature=90.0)
    low = "300.0 MiB free"
    decision = policy.evaluate(hot, lambda pid: False, False, 0.0, 1e9, None, "", low)
    assert (decision.mode, decision.reason, decision.may_work) == (Mode.DISK_LOW, low, False)
    paused = policy.evaluate(hot, lambda pid: False, False, 0.0, 1e9, None, "until 22:00", low)
    assert paused.mode is Mode.PAUSED


def test_an_atomic_write_that_fails_leaves_no_partial_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The temporary file of a write cut short by a full disk kept its room taken."""

    def no_room(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_room)
    with pytest.raises(OSError):
        write_atomic(tmp_path / "batch", b"x" * 4096)
    assert list(tmp_path.iterdir()) == []
