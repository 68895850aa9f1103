"""The per-device runner on its own: batches, crashes, timeouts and cancels."""

import asyncio
import json
from pathlib import Path

from sparegrid.worker.executors import FAKE_TARGETS, ExecutorRegistry
from sparegrid.worker.node.devices import DeviceInfo
from sparegrid.worker.slots.child.protocol import ChildTask, Outcome
from sparegrid.worker.slots.child.runner import DeviceRunner, describe_exit

DEVICE = DeviceInfo(index=0, kind="cpu", name="fake-0")


def runner(tmp_path: Path, time_limit: float = 30.0) -> DeviceRunner:
    targets = ExecutorRegistry.builtin().with_targets(FAKE_TARGETS).targets()
    return DeviceRunner(DEVICE, targets, tmp_path / "work", time_limit)


def echo(serial: int, data: str = "", sleep_ms: int = 0) -> ChildTask:
    params = json.dumps({"data": data or f"t{serial}", "sleep_ms": sleep_ms}).encode()
    return ChildTask(serial, "echo", params, {})


async def run_all(r: DeviceRunner, tasks: list[ChildTask]) -> dict[int, Outcome]:
    outcomes: dict[int, Outcome] = {}
    await r.run(tasks, lambda o: outcomes.__setitem__(o.serial, o))
    return outcomes


async def test_a_batch_runs_in_one_child_with_durations(tmp_path: Path) -> None:
    r = runner(tmp_path)
    try:
        outcomes = await run_all(r, [echo(i) for i in range(1, 51)])
        pid = r._child.proc.pid if r._child else None
        outcomes.update(await run_all(r, [echo(51, sleep_ms=20)]))
        assert r._child is not None and r._child.proc.pid == pid  # the child is long-lived
    finally:
        await r.close()
    assert sorted(outcomes) == list(range(1, 52))
    assert all(o.ok for o in outcomes.values())
    assert outcomes[7].outputs[0].data == b"t7"
    assert outcomes[51].duration_us >= 20_000
    assert not list((tmp_path / "work").glob("[0-9]*"))  # scratch directories are removed


async def test_a_crash_blames_the_running_task_and_the_rest_still_run(tmp_path: Path) -> None:
    r = runner(tmp_path)
    try:
        crash = ChildTask(2, "crash", b"{}", {})
        outcomes = await run_all(r, [echo(1), crash, echo(3)])
    finally:
        await r.close()
    assert outcomes[1].ok and outcomes[3].ok
    assert (outcomes[2].code, outcomes[2].retryable) == ("EXECUTOR_CRASHED", True)


async def test_timeout_and_cancel_kill_only_their_task(tmp_path: Path) -> None:
    r = runner(tmp_path, time_limit=0.3)
    try:
        outcomes = await run_all(r, [echo(1, sleep_ms=20_000), echo(2)])
        assert outcomes[1].code == "TIMEOUT" and outcomes[2].ok
        r2 = runner(tmp_path / "b")
        run = asyncio.create_task(run_all(r2, [echo(3, sleep_ms=20_000), echo(4), echo(5)]))
        while r2._child is None or r2._child.state.running() is None:
            await asyncio.sleep(0.01)
        r2.cancel(3)
        r2.cancel(5)  # not started yet: skipped without killing anything
        outcomes = await asyncio.wait_for(run, 10)
        await r2.close()
    finally:
        await r.close()
    assert outcomes[3].cancelled and outcomes[5].cancelled and outcomes[4].ok


def test_describe_exit() -> None:
    assert describe_exit(70) == "exit status 70"
    assert describe_exit(-11) == "killed by SIGSEGV"
    assert "out of memory" in describe_exit(-9)


async def test_cancel_while_the_child_is_starting(tmp_path: Path) -> None:
    r = runner(tmp_path)
    try:
        run = asyncio.create_task(run_all(r, [echo(1, sleep_ms=20_000), echo(2)]))
        await asyncio.sleep(0)  # run() has the tasks and is starting the child
        assert r._child is None
        r.cancel(1)
        async with asyncio.timeout(10):
            outcomes = await run
    finally:
        await r.close()
    assert outcomes[1].cancelled and outcomes[2].ok
