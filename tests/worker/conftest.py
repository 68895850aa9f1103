import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from sparegrid.worker.testing.coordinator import FakeCoordinator


@pytest.fixture
async def coordinator() -> AsyncIterator[FakeCoordinator]:
    fake = FakeCoordinator()
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


def _live_children() -> list[int]:
    me = str(os.getpid())
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, parent = stat.read_text().rsplit(")", 1)[1].split()[:2]
        except (OSError, ValueError):
            continue
        if parent == me and state != "Z":
            children.append(int(stat.parent.name))
    return children


@pytest.fixture(autouse=True)
def reap_children() -> Iterator[None]:
    """Fails a test that leaves executor processes running, and kills them."""
    yield
    deadline = time.monotonic() + 2
    while (children := _live_children()) and time.monotonic() < deadline:
        time.sleep(0.02)
    for pid in children:
        os.kill(pid, signal.SIGKILL)
    assert not children, f"the test left child processes running: {children}"
