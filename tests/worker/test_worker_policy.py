"""The daemon under its policy, against a fake coordinator, with a synthetic GPU: it leases
only while a device may work, preempts at once when the owner comes back, says so in its
status, and counts the credit the coordinator reports."""

import asyncio
import json
import os
from datetime import datetime
from pathlib import Path
from typing import Any

from sparegrid.v1 import worker_pb2
from sparegrid.wire.clock import SystemClock
from sparegrid.worker.node.status import read_status, render, status_line
from sparegrid.worker.policy import DeviceState, GpuProcess, SyntheticSource
from sparegrid.worker.testing.coordinator import FakeCoordinator, FakeSession, is_kind
from sparegrid.worker.testing.harness import assignment, make_config, running_worker, wait_until

LONG = {"data": "slow", "sleep_ms": 30_000}
OWNER = DeviceState(0, processes=(GpuProcess(999_999, 1 << 30, "graphics"),))


class WallClock(SystemClock):
    """Fake wall time for the time windows; the daemon's loops run on real time."""

    def __init__(self, start: datetime) -> None:
        self._wall = start.timestamp()

    def set_wall(self, wall: datetime) -> None:
        self._wall = wall.timestamp()

    def now(self) -> float:
        return self._wall


def config(tmp_path: Path, coordinator: FakeCoordinator, **overrides: Any) -> Any:
    settings = {"idle_seconds": 0, "poll_interval": 0.02, **overrides}
    return make_config(tmp_path, coordinator.address, **settings)


def resets(session: FakeSession) -> list[worker_pb2.Credit]:
    return [m.credit for m in session.of_kind("credit") if m.credit.reset]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_owner_back_preempts_the_running_task_and_stops_leasing(
    tmp_path: Path, coordinator: FakeCoordinator
) -> None:
    source = SyntheticSource()
    async with running_worker(config(tmp_path, coordinator), device_state=source) as (worker, _):
        session = await coordinator.session()
        await session.wait_for(is_kind("credit"))
        session.assign(assignment("long", params=LONG), assignment("queued", params=LONG))
        await wait_until(lambda: worker.attempt_phases().get("long") == "running")
        await wait_until(lambda: worker._tasks.slots[0].runner.busy)
        child = worker._tasks.slots[0].runner.pid
        assert child is not None
        source.set(OWNER)
        failures = await session.wait_failures(2)
        assert {(f.attempt_id, f.code, f.retryable) for f in failures} == {
            ("long", "PREEMPTED", True),
            ("queued", "PREEMPTED", True),
        }
        assert "paused: owner active" in failures[0].message
        await session.wait_for(lambda m: m.WhichOneof("body") == "credit" and m.credit.reset)
        assert resets(session)[-1].count == 0
        await wait_until(lambda: not pid_alive(child))  # its GPU memory goes with it
        # work the coordinator sent before it heard of the pause is handed straight back
        session.assign(assignment("late", params={"data": "x"}))
        [*_, late] = await session.wait_failures(3)
        assert (late.attempt_id, late.code) == ("late", "PREEMPTED")
        assert worker.status()["devices"][0]["state"] == "paused: owner active"
        # the owner leaves: credit is granted again and work runs
        before = len(session.of_kind("credit"))
        source.set(DeviceState(0))
        await session.wait_for(is_kind("credit"), count=before + 1)
        session.assign(assignment("after"))
        await session.wait_statements(1)


async def test_too_hot_pauses_and_cooling_resumes(
    tmp_path: Path, coordinator: FakeCoordinator
) -> None:
    source = SyntheticSource()
    settings = config(tmp_path, coordinator, max_temp=80.0, temp_hysteresis=10.0)
    async with running_worker(settings, device_state=source) as (worker, _):
        session = await coordinator.session()
        session.assign(assignment("long", params=LONG))
        await wait_until(lambda: worker.attempt_phases().get("long") == "running")
        source.set(DeviceState(0, temperature=85.0))
        [failure] = await session.wait_failures(1)
        assert failure.code == "PREEMPTED" and "too hot" in failure.message
        source.set(DeviceState(0, temperature=75.0))
        polled = source.reads
        await wait_until(
            lambda: source.reads >= polled + 5
        )  # several polls: still paused above 70 C
        assert worker.status()["devices"][0]["state"] == "paused: too hot"
        source.set(DeviceState(0, temperature=69.0))
        await wait_until(lambda: worker.status()["devices"][0]["state"] == "idle-waiting")


async def test_no_lease_outside_the_window_or_when_a_task_cannot_finish_in_it(
    tmp_path: Path, coordinator: FakeCoordinator
) -> None:
    clock = WallClock(start=datetime(2026, 11, 30, 12, 0))  # Monday noon: outside
    settings = config(tmp_path, coordinator, windows=("mon 21:00-22:00",), task_estimate=600.0)
    async with running_worker(settings, clock=clock) as (worker, _):
        session = await coordinator.session()
        shown = worker.status()["devices"][0]
        assert (shown["state"], shown["reason"]) == ("outside window", "opens in 9h 00m")
        clock.set_wall(datetime(2026, 11, 30, 21, 55))  # open, but only 300 s are left
        await wait_until(lambda: worker.decision(0) is not None and worker.decision(0).may_work)  # type: ignore[union-attr]
        snapshot = worker.status()["devices"][0]
        assert (snapshot["state"], snapshot["reason"]) == (
            "idle-waiting",
            "window closes in 300s; tasks take ~600s",
        )
        assert session.credit(0) == 0
        clock.set_wall(datetime(2026, 11, 30, 21, 0))  # a full hour: now it leases
        await session.wait_for(is_kind("credit"))
        session.assign(assignment("long", params=LONG))
        await wait_until(lambda: worker.attempt_phases().get("long") == "running")
        clock.set_wall(datetime(2026, 11, 30, 22, 0))  # the window closes: the task stops
        [failure] = await session.wait_failures(1)
        assert failure.code == "PREEMPTED" and "outside window" in failure.message


async def test_status_socket_and_credit_earned(
    tmp_path: Path, coordinator: FakeCoordinator
) -> None:
    """The credit shown is the coordinator's ledger figure (Welcome, then Credited), never
    a sum of the acks: a result validated later, in another node's batch, is paid then."""
    coordinator.ack_results = False
    coordinator.credited = 40  # paid before this session
    async with running_worker(config(tmp_path, coordinator)) as (worker, _):
        session = await coordinator.session()
        session.assign(assignment("a1"), assignment("a2"))
        await session.wait_statements(2)
        [batch] = session.of_kind("results")[:1]
        verdicts = [
            worker_pb2.AttemptVerdict(attempt_id="a1", accepted=True, credit=3),
            worker_pb2.AttemptVerdict(attempt_id="a2", accepted=False, code="BAD_OUTPUT"),
        ]
        ack = worker_pb2.ResultAck(batch_id=batch.results.batch_id, verdicts=verdicts)
        session.send(worker_pb2.CoordinatorMessage(result_ack=ack))
        await wait_until(lambda: worker.earnings.accepted == 1)
        assert worker.earnings.total == 40  # an ack's credit is not the ledger's figure
        session.send(worker_pb2.CoordinatorMessage(credited=worker_pb2.Credited(total=56)))
        await wait_until(lambda: worker.earnings.total == 56)
        snapshot = await asyncio.to_thread(read_status, tmp_path / "status.sock")
        assert snapshot["credit"]["today"] == 16 and snapshot["credit"]["accepted"] == 1
        assert snapshot["devices"][0]["state"] == "idle-waiting"
        assert any("BAD_OUTPUT" in e["message"] for e in snapshot["errors"])
        table = render(snapshot)
        assert "credit: 56 in the coordinator's ledger, +16 today" in table
        assert "isolation of tasks:" in table
        assert "0: idle-waiting" in status_line(snapshot)
        assert "credit: 56 (+16 today)" in status_line(snapshot)
    saved = json.loads((tmp_path / "earnings.json").read_text())
    assert (saved["day_start"], saved["total"], saved["accepted"]) == (40, 56, 1)
    assert not (tmp_path / "status.sock").exists()
