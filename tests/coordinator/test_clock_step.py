"""The wall clock steps (an NTP correction, a machine resumed from sleep, `date -s`):
leases are kept in wall time, so every group commit first moves every running attempt with
a step it sees.
A step forward must not expire every lease at once (each counted against its node and
its task), nor a step back let a dead node hold its tasks for the hour it went back."""

import asyncio
import logging
from pathlib import Path

import pytest

from sparegrid.coordinator.background import PassClock
from sparegrid.coordinator.clock import FakeClock
from sparegrid.coordinator.domain import AttemptState, JobState
from sparegrid.coordinator.groupcommit import WallSteps
from tests.coordinator.helpers import FakeNode, echo, make_app, make_client

HOUR = 3600.0


async def settle() -> None:
    await asyncio.sleep(0.15)  # several reaper passes, 0.01 s apart


async def test_a_step_forward_expires_no_lease(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app(tmp_path, reap_interval_seconds=0.01)
    clock = app.clock
    assert isinstance(clock, FakeClock)
    alice = make_client(app)
    node = FakeNode(app, "n1")
    node.connect()
    job_id = echo(app, alice, 2)
    app.scheduler.dispatch()
    items = node.sink.take()
    assert len(items) == 2
    window = app.scheduler.window(node.id)
    app.start()
    await settle()  # the reaper runs
    try:
        with caplog.at_level(logging.WARNING, "sparegrid.coordinator"):
            clock.set_wall(clock.now() + HOUR)
            await settle()
        assert "the wall clock stepped +3600.0 s; 2 running attempt(s)" in caplog.text
        assert app.scheduler.expired_total == 0
        running = app.store.get_attempts([a.id for a, _, _ in items])
        assert {a.state for a in running} == {AttemptState.RUNNING}
        assert app.scheduler.window(node.id) == window  # not halved
        verdicts = node.answer(items)
        assert all(v.accepted for v in verdicts)
        job = app.store.get_job(job_id)
        assert job is not None and job.state == JobState.SUCCEEDED
        assert app.store.balance(f"node:{node.id}") == 2
    finally:
        await app.stop()


async def test_after_a_step_back_a_silent_nodes_lease_still_runs_out(tmp_path: Path) -> None:
    app = make_app(tmp_path, reap_interval_seconds=0.01)
    clock = app.clock
    assert isinstance(clock, FakeClock)
    alice = make_client(app)
    silent = FakeNode(app, "silent")
    silent.connect(credit=1)
    echo(app, alice, 1)
    app.scheduler.dispatch()
    [(attempt, _, _)] = silent.sink.take()
    app.start()
    await settle()  # the reaper runs
    try:
        clock.set_wall(clock.now() - HOUR)
        await settle()
        clock.advance(app.settings.lease_seconds + 1)  # no heartbeat comes
        await settle()
        [after] = app.store.get_attempts([attempt.id])
        assert after.state == AttemptState.EXPIRED
        other = FakeNode(app, "other")
        other.connect()
        assert len(other.sink.take()) == 1  # the task went on to a node that answers
    finally:
        await app.stop()


async def test_a_heartbeat_right_after_a_step_back_renews_its_lease_once(
    tmp_path: Path,
) -> None:
    """The heartbeat's group commit follows the step before it renews: a reaper pass
    after it must not move the renewed lease back by the step once more (it would expire
    at once)."""
    app = make_app(tmp_path, reap_interval_seconds=0.05)
    clock = app.clock
    assert isinstance(clock, FakeClock)
    alice = make_client(app)
    node = FakeNode(app, "n1")
    node.connect(credit=1)
    echo(app, alice, 1)
    app.scheduler.dispatch()
    [(attempt, _, _)] = node.sink.take()
    app.start()
    await asyncio.sleep(0.2)  # the reaper runs
    try:
        clock.set_wall(clock.now() - HOUR)
        await app.call(lambda: app.scheduler.heartbeat(node.id))  # before the next pass
        renewed = clock.now() + app.settings.lease_seconds
        await asyncio.sleep(0.2)  # passes after it
        [after] = app.store.get_attempts([attempt.id])
        assert after.state == AttemptState.RUNNING
        assert after.deadline == pytest.approx(renewed, abs=1.0)
        assert app.scheduler.expired_total == 0
    finally:
        await app.stop()


def test_a_pass_late_by_monotonic_time_skips_once() -> None:
    clock = FakeClock()
    passes = PassClock(clock, interval=1.0)
    clock.advance(1.0)
    assert not passes.late()
    clock.advance(10.0)  # the process was stopped: both clocks moved
    assert passes.late()
    clock.advance(10.0)
    assert not passes.late()  # skips once, not twice in a row
    clock.set_wall(clock.now() - 120.0)  # a step of the wall clock is no stall
    clock.advance(1.0)
    assert not passes.late()


def test_wall_steps_tell_a_step_from_time_passing() -> None:
    clock = FakeClock()
    steps = WallSteps(clock)
    clock.advance(10.0)  # both clocks moved (a stop, or time passing)
    assert steps.step() == 0.0
    clock.set_wall(clock.now() - 120.0)
    assert steps.step() == -120.0
    assert steps.step() == 0.0  # counted once
    clock.set_wall(clock.now() + 0.2)  # a small correction is no step
    assert steps.step() == 0.0
