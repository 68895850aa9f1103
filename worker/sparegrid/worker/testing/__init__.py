"""Fakes for tests of the worker (and of code that drives one): a fake coordinator that
speaks WorkerService and BlobService over a real grpc.aio server on 127.0.0.1, and a
harness that runs a `Worker` on fake devices with the fake executors.

coordinator = FakeCoordinator()
await coordinator.start()  # on 127.0.0.1, a free port; stop() when done
async with running_worker(make_config(tmp, coordinator.address)) as (worker, _):
    session = await coordinator.session()
    session.assign(assignment("a1"))
    await session.wait_statements(1)
"""

from sparegrid.worker.testing.coordinator import (
    FakeCoordinator,
    FakeSession,
    is_kind,
    statement_attempts,
)
from sparegrid.worker.testing.harness import (
    assignment,
    fake_devices,
    fake_registry,
    make_config,
    running_worker,
    wait_until,
)

__all__ = [
    "FakeCoordinator",
    "FakeSession",
    "assignment",
    "fake_devices",
    "fake_registry",
    "is_kind",
    "make_config",
    "running_worker",
    "statement_attempts",
    "wait_until",
]
