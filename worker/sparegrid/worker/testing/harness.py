"""A worker under test: configs, fake devices, assignments, a running worker."""

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from sparegrid.v1 import common_pb2, worker_pb2
from sparegrid.worker.config import WorkerConfig
from sparegrid.worker.daemon import Worker
from sparegrid.worker.executors import FAKE_TARGETS, ExecutorRegistry
from sparegrid.worker.node.devices import DeviceInfo


def fake_devices(count: int = 1) -> list[DeviceInfo]:
    return [
        DeviceInfo(index=i, kind="cpu", name=f"fake-{i}", memory_bytes=1 << 30, backend="fake")
        for i in range(count)
    ]


def fake_registry() -> ExecutorRegistry:
    return ExecutorRegistry.builtin().with_targets(FAKE_TARGETS)


def make_config(data_dir: Path, address: str, **overrides: Any) -> WorkerConfig:
    settings: dict[str, Any] = {
        "coordinator": address,
        "data_dir": data_dir,
        "name": "test-node",
        "reconnect_initial": 0.05,
        "reconnect_max": 0.2,
        "drain_timeout": 5.0,
    }
    settings.update(overrides)
    return WorkerConfig(**settings)


def assignment(
    attempt_id: str,
    kind: str = "echo",
    params: dict[str, Any] | None = None,
    inputs: dict[str, tuple[str, int]] | None = None,
    device: int = 0,
) -> worker_pb2.Assignment:
    refs = [
        common_pb2.InputRef(name=name, digest=digest, size=size)
        for name, (digest, size) in (inputs or {}).items()
    ]
    return worker_pb2.Assignment(
        attempt_id=attempt_id,
        task_id=f"task-{attempt_id}",
        job_id="job-1",
        kind=kind,
        params=json.dumps(params if params is not None else {"data": attempt_id}).encode(),
        inputs=refs,
        device_index=device,
    )


@contextlib.asynccontextmanager
async def running_worker(
    config: WorkerConfig, devices: int = 1, **kwargs: Any
) -> AsyncIterator[tuple[Worker, "asyncio.Task[None]"]]:
    """A worker running in a task; stopped at once (forced) when the block exits."""
    worker = Worker(config, devices=fake_devices(devices), executors=fake_registry(), **kwargs)
    task = asyncio.create_task(worker.run())
    try:
        yield worker, task
    finally:
        worker.shutdown(force=True)
        async with asyncio.timeout(10):
            await task


async def wait_until(condition: Any, timeout: float = 10.0) -> None:
    """Polls a condition that has no event to wait on (test-only)."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)
