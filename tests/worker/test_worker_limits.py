"""The volunteer's limits: transfer rates, cache size, VRAM share, power cap, required
isolation, and the credit tally's day boundary."""

import asyncio
import importlib.util
import logging
import os
from datetime import datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from sparegrid.wire.clock import FakeClock
from sparegrid.worker import startup
from sparegrid.worker.config import ConfigError
from sparegrid.worker.daemon import Worker
from sparegrid.worker.node.earnings import Earnings
from sparegrid.worker.policy import DeviceState, GpuProcess, SyntheticSource
from sparegrid.worker.policy.nvml import NvmlSource
from sparegrid.worker.slots.cache import BlobCache
from sparegrid.worker.slots.child.sandbox import Report
from sparegrid.worker.testing.coordinator import FakeCoordinator
from sparegrid.worker.testing.harness import (
    assignment,
    fake_devices,
    make_config,
    running_worker,
    wait_until,
)
from sparegrid.worker.upstream.ratelimit import RateLimiter

LONG = {"data": "slow", "sleep_ms": 30_000}


async def test_rate_limiter_spreads_bytes_over_time() -> None:
    clock = FakeClock()
    limiter = RateLimiter(1000, clock)
    await limiter.take(1000)  # one second's burst passes at once
    assert clock.monotonic() == 1000.0
    await limiter.take(500)
    assert clock.monotonic() == pytest.approx(1000.5)
    await limiter.take(2000)  # a large chunk waits for all of its bytes
    assert clock.monotonic() == pytest.approx(1002.5)


def test_cache_trims_the_least_recently_used_blobs_it_does_not_need(tmp_path: Path) -> None:
    cache = BlobCache(tmp_path, FakeClock(), max_bytes=3000)
    digests = [f"{i:x}" * 64 for i in range(1, 5)]
    for age, digest in enumerate(digests):
        path = cache.path_for(digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * 1000)
        os.utime(path, (1000 + age, 1000 + age))  # digests[0] is the oldest
    cache.in_use = lambda: {digests[0]}
    assert cache.trim() == 1000
    assert [cache.path_for(d).exists() for d in digests] == [True, False, True, True]


def test_earnings_start_a_new_day(tmp_path: Path) -> None:
    """Today's credit is the ledger's figure less what it was when the day began here."""
    now = [datetime(2026, 11, 30, 23, 59)]
    earnings = Earnings(tmp_path / "earnings.json", lambda: now[0])
    earnings.credited(100)  # Welcome: paid before
    earnings.credited(105)
    now[0] += timedelta(minutes=2)
    earnings.credited(107)
    earnings.took(2)
    assert (earnings.snapshot()["today"], earnings.snapshot()["total"]) == (2, 107)
    again = Earnings(tmp_path / "earnings.json", lambda: now[0])
    assert (again.today, again.total, again.accepted) == (2, 107, 2)
    again.credited(50)  # a ledger restored from a backup: never a negative day
    assert (again.today, again.total) == (0, 50)


async def test_a_task_over_its_vram_share_is_stopped_and_counted(
    tmp_path: Path, coordinator: FakeCoordinator
) -> None:
    source = SyntheticSource()
    config = make_config(
        tmp_path, coordinator.address, idle_seconds=0, poll_interval=0.02, max_vram=0.5
    )
    async with running_worker(config, device_state=source) as (worker, _):
        session = await coordinator.session()
        assert session.hello.devices[0].memory_bytes == (1 << 30) // 2  # lent: half
        session.assign(assignment("big", params=LONG))
        await wait_until(lambda: worker._device_busy(0))
        pid = worker.executor_pid(0)
        assert pid is not None
        source.set(DeviceState(0, memory_total=1 << 30, processes=(GpuProcess(pid, 900 << 20),)))
        [failure] = await session.wait_failures(1)
        assert (failure.attempt_id, failure.code) == ("big", "OVER_VRAM_SHARE")
        assert "50%" in failure.message


def test_power_cap_is_set_through_nvml_or_says_why_not(tmp_path: Path, caplog: Any) -> None:
    class Refused(Exception):
        pass

    calls: list[int] = []

    def set_limit(handle: object, milliwatts: int) -> None:
        calls.append(milliwatts)
        raise Refused("Insufficient Permissions")

    nvml = SimpleNamespace(
        NVMLError=Refused,
        nvmlInit=lambda: None,
        nvmlShutdown=lambda: None,
        nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetPowerManagementLimitConstraints=lambda h: (100_000, 300_000),
        nvmlDeviceSetPowerManagementLimit=set_limit,
    )
    source = NvmlSource(load=lambda: nvml)
    config = make_config(tmp_path, "127.0.0.1:1", power_cap=500.0)
    startup.apply_power_cap(config, source, fake_devices())
    assert calls == [300_000]  # clamped to what the board allows
    assert "pausing above it instead" in caplog.text


async def test_required_isolation_that_is_incomplete_stops_the_worker(
    tmp_path: Path, coordinator: FakeCoordinator, monkeypatch: pytest.MonkeyPatch
) -> None:
    partial = Report("unavailable: user namespaces are disabled", "ok (Landlock)", "ok")
    monkeypatch.setattr(startup, "probe", lambda work, mode: partial)
    worker = Worker(
        make_config(tmp_path, coordinator.address, sandbox="require"), devices=fake_devices()
    )
    with pytest.raises(ConfigError, match="--sandbox require, but network: unavailable"):
        async with asyncio.timeout(10):
            await worker.run()
    assert not (tmp_path / "status.sock").exists()  # it stopped before serving anything


def test_a_result_carries_inline_no_more_than_the_coordinator_takes() -> None:
    """Each output within --inline-limit goes inline while the result's total stays within
    MAX_INLINE_RESULT; the rest are uploaded (the coordinator strikes a node past it)."""
    from sparegrid.wire import sha256_hex
    from sparegrid.wire.receipt import MAX_INLINE_OUTPUT, MAX_INLINE_RESULT
    from sparegrid.worker.daemon_results import split_inline
    from sparegrid.worker.slots.child.protocol import OutputData

    def output(n: int, size: int) -> OutputData:
        data = bytes([n]) * size
        return OutputData(f"out{n}", sha256_hex(data), size, data)

    outputs = [output(n, MAX_INLINE_OUTPUT) for n in range(6)] + [output(9, 10)]
    inline, blobs = split_inline(outputs, MAX_INLINE_OUTPUT)
    assert sum(map(len, inline.values())) <= MAX_INLINE_RESULT
    assert len(inline) == 4 and len(blobs) == 3  # the small one is uploaded too: no room
    assert set(inline) | set(blobs) == {o.digest for o in outputs}
    small, big = split_inline([output(1, 10), output(2, 100)], 64)
    assert list(small) == [output(1, 10).digest] and list(big) == [output(2, 100).digest]


async def test_the_start_line_names_the_job_kinds_the_node_takes(
    tmp_path: Path, coordinator: FakeCoordinator, caplog: pytest.LogCaptureFixture
) -> None:
    """A volunteer sees at start which jobs its node will run (render only with bpy, and
    with which Blender), not only when a job of a kind it lacks never comes."""
    worker = Worker(make_config(tmp_path, coordinator.address), devices=fake_devices())
    with caplog.at_level(logging.INFO, logger="sparegrid.worker"):
        task = asyncio.create_task(worker.run())
        try:
            await wait_until(lambda: "takes " in caplog.text)
        finally:
            worker.shutdown(force=True)
            await asyncio.wait_for(task, 10)
    line = next(r.getMessage() for r in caplog.records if "starting:" in r.getMessage())
    assert "takes checksum, echo, " in line and line.endswith(" jobs"), line
    assert ("render (Blender 5." in line) == (importlib.util.find_spec("bpy") is not None), line
