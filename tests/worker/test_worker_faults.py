"""Crashes, timeouts, cancels, restarts, reconnects and the drain on shutdown."""

import asyncio
from pathlib import Path

import pytest

from sparegrid.wire.receipt import verify_batch
from sparegrid.worker.slots.child import runner as runner_module
from sparegrid.worker.testing.coordinator import FakeCoordinator, is_kind, statement_attempts
from sparegrid.worker.testing.harness import assignment, make_config, running_worker, wait_until

LONG = {"data": "slow", "sleep_ms": 30_000}


async def test_child_crash_fails_the_task_and_the_next_runs(
    tmp_path: Path, coordinator: FakeCoordinator
) -> None:
    async with running_worker(make_config(tmp_path, coordinator.address)):
        session = await coordinator.session()
        session.assign(assignment("boom", kind="crash", params={}), assignment("after"))
        [failure] = await session.wait_failures(1)
        assert (failure.attempt_id, failure.code, failure.retryable) == (
            "boom",
            "EXECUTOR_CRASHED",
            True,
        )
        assert "exit status 70" in failure.message
        assert statement_attempts(await session.wait_statements(1)) == ["after"]


async def test_unexpected_exception_is_a_retryable_failure(
    tmp_path: Path, coordinator: FakeCoordinator
) -> None:
    async with running_worker(make_config(tmp_path, coordinator.address)):
        session = await coordinator.session()
        session.assign(assignment("r1", kind="raise", params={}))
        [failure] = await session.wait_failures(1)
    assert (failure.code, failure.retryable) == ("EXECUTOR_ERROR", True)
    assert "RuntimeError" in failure.message


async def test_timeout_kills_the_task(tmp_path: Path, coordinator: FakeCoordinator) -> None:
    config = make_config(tmp_path, coordinator.address, max_attempt_seconds=0.3)
    async with running_worker(config):
        session = await coordinator.session()
        started = asyncio.get_running_loop().time()
        session.assign(assignment("slow", params=LONG), assignment("quick"))
        [failure] = await session.wait_failures(1)
        assert (failure.attempt_id, failure.code) == ("slow", "TIMEOUT")
        assert statement_attempts(await session.wait_statements(1)) == ["quick"]
        assert asyncio.get_running_loop().time() - started < 5


async def test_cancel_stops_a_running_task(tmp_path: Path, coordinator: FakeCoordinator) -> None:
    async with running_worker(make_config(tmp_path, coordinator.address)) as (worker, _):
        session = await coordinator.session()
        session.assign(assignment("long", params=LONG), assignment("next"))
        await wait_until(lambda: worker.attempt_phases().get("long") == "running")
        session.cancel("long")
        assert statement_attempts(await session.wait_statements(1)) == ["next"]
        # the window of 2, and one back for each task that ended
        await wait_until(lambda: session.credit(0) == 4)
    assert not session.failures()


async def test_outbox_survives_a_restart_and_is_resent_until_acked(
    tmp_path: Path, coordinator: FakeCoordinator
) -> None:
    coordinator.ack_results = False
    config = make_config(tmp_path, coordinator.address)
    async with running_worker(config):
        first = await coordinator.session()
        first.assign(assignment("kept"))
        [sent] = await first.wait_for(is_kind("results"))
    assert len(list((tmp_path / "outbox").glob("*.batch"))) == 1

    coordinator.ack_results = True
    async with running_worker(config):
        second = await coordinator.session(2)
        [resent] = await second.wait_for(is_kind("results"))
        assert resent.results == sent.results
        verify_batch(
            second.hello.public_key, list(resent.results.statements), resent.results.signature
        )
        await wait_until(lambda: not list((tmp_path / "outbox").glob("*.batch")))
        second.assign(assignment("new"))
        [_, newer] = await second.wait_for(is_kind("results"), count=2)
    assert newer.results.batch_id > sent.results.batch_id


async def test_reconnects_after_coordinator_restart_and_keeps_running_tasks(
    tmp_path: Path, coordinator: FakeCoordinator
) -> None:
    config = make_config(tmp_path, coordinator.address)
    async with running_worker(config) as (worker, _):
        first = await coordinator.session()
        first.assign(assignment("across", params={"data": "x", "sleep_ms": 1000}))
        await wait_until(lambda: worker.attempt_phases().get("across") == "running")
        port = coordinator.port
        await coordinator.stop()
        await coordinator.start(port=port)
        second = await coordinator.session(2)
        assert list(second.hello.running_attempts) == ["across"]
        assert statement_attempts(await second.wait_statements(1)) == ["across"]
        assert second.credit(0) == 2


async def test_attempts_not_resumed_are_dropped(
    tmp_path: Path, coordinator: FakeCoordinator
) -> None:
    async with running_worker(make_config(tmp_path, coordinator.address)) as (worker, _):
        first = await coordinator.session()
        first.assign(assignment("gone", params=LONG))
        await wait_until(lambda: worker.attempt_phases().get("gone") == "running")
        coordinator.resume = False
        port = coordinator.port
        await coordinator.stop()
        await coordinator.start(port=port)
        second = await coordinator.session(2)
        assert list(second.welcome.cancelled_attempts) == ["gone"]
        await wait_until(lambda: not worker.attempt_phases())
        second.assign(assignment("fresh"))
        assert statement_attempts(await second.wait_statements(1)) == ["fresh"]


async def test_drain_sends_drain_and_finishes_the_running_task(
    tmp_path: Path, coordinator: FakeCoordinator
) -> None:
    config = make_config(tmp_path, coordinator.address)
    async with running_worker(config) as (worker, task):
        session = await coordinator.session()
        session.assign(assignment("finishing", params={"data": "done", "sleep_ms": 400}))
        await wait_until(lambda: worker.attempt_phases().get("finishing") == "running")
        credits_before = len(session.of_kind("credit"))
        worker.shutdown()
        async with asyncio.timeout(10):
            await task
    kinds = [m.WhichOneof("body") for m in session.received]
    assert kinds.index("drain") < kinds.index("results")
    assert statement_attempts(session.statements()) == ["finishing"]
    assert len(session.of_kind("credit")) == credits_before
    assert not list((tmp_path / "outbox").glob("*.batch"))
    async with asyncio.timeout(5):
        await session.ended.wait()


async def test_a_child_that_cannot_start_fails_its_tasks(
    tmp_path: Path, coordinator: FakeCoordinator, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def cannot_fork(*args: object, **kwargs: object) -> None:
        raise OSError("Resource temporarily unavailable")

    monkeypatch.setattr(runner_module.asyncio, "create_subprocess_exec", cannot_fork)
    async with running_worker(make_config(tmp_path, coordinator.address)):
        session = await coordinator.session()
        session.assign(assignment("nofork"))
        [failure] = await session.wait_failures(1)
    assert (failure.code, failure.retryable) == ("EXECUTOR_CRASHED", True)
    assert "Resource temporarily unavailable" in failure.message


async def test_a_task_that_breaks_its_device_fails_alone(
    tmp_path: Path, coordinator: FakeCoordinator
) -> None:
    # A CUDA device-side assert (an index out of range in a client's program) leaves the
    # process's CUDA context unusable: every later task on that device would fail too
    async with running_worker(make_config(tmp_path, coordinator.address)):
        session = await coordinator.session()
        session.assign(
            assignment("bad", kind="devicefault", params={"break": True}),
            assignment("after", kind="devicefault", params={}),
            assignment("again", kind="devicefault", params={}),
        )
        [failure] = await session.wait_failures(1)
        assert (failure.attempt_id, failure.code) == ("bad", "EXECUTOR_ERROR")
        assert "device-side assert" in failure.message
        done = statement_attempts(await asyncio.wait_for(session.wait_statements(2), 30))
        assert sorted(done) == ["after", "again"]
        assert session.failures() == [failure]
