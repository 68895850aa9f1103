"""An executor cannot write outside its scratch directory, read the node key, or open a
network connection (where this machine supports the isolation; skipped, with the reason,
where it does not). The control case shows the same executor can when isolation is off."""

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sparegrid.wire.receipt import decode_statement
from sparegrid.worker.daemon import Worker
from sparegrid.worker.executors import FAKE_TARGETS, ExecutorRegistry
from sparegrid.worker.slots.child.sandbox import probe
from sparegrid.worker.testing.coordinator import FakeCoordinator
from sparegrid.worker.testing.harness import assignment, fake_devices, make_config

ESCAPE = "sparegrid.worker.executors.fake:EscapeExecutor"


def _isolation_or_skip(tmp_path: Path) -> None:
    report = probe(tmp_path / "probe")
    if not report.network.startswith("ok"):
        pytest.skip(f"no network isolation here: {report.network}")
    if not report.filesystem.startswith("ok"):
        pytest.skip(f"no filesystem isolation here: {report.filesystem}")


async def _run_escape(
    tmp_path: Path, coordinator: FakeCoordinator, **config: Any
) -> dict[str, str]:
    data_dir = tmp_path / "node"
    settings = make_config(data_dir, coordinator.address, **config)
    registry = ExecutorRegistry.builtin().with_targets((*FAKE_TARGETS, ESCAPE))
    worker = Worker(settings, devices=fake_devices(), executors=registry)
    task = asyncio.create_task(worker.run())
    try:
        session = await coordinator.session()
        host, port = coordinator.address.rsplit(":", 1)
        params = {
            "write": [str(tmp_path / "outside.txt"), str(data_dir / "planted")],
            "read": [str(data_dir / "node.key")],
            "connect": [[host, int(port)]],
            "scratch_bytes": 2 << 20,
        }
        session.assign(assignment("esc", kind="escape", params=params))
        [statement] = await session.wait_statements(1)
    finally:
        worker.shutdown(force=True)
        await task
    return _report(session, statement)


def _report(session: Any, statement: bytes) -> dict[str, str]:
    digest = decode_statement(statement).outputs[0].digest
    for message in session.of_kind("results"):
        if digest in message.results.inline_outputs:
            return dict(json.loads(message.results.inline_outputs[digest]))
    raise AssertionError("the report did not come inline")


async def test_executor_is_confined_to_its_scratch_dir_and_offline(
    tmp_path: Path, coordinator: FakeCoordinator
) -> None:
    _isolation_or_skip(tmp_path)
    report = await _run_escape(tmp_path, coordinator, task_output_size=1 << 20)
    outside, planted = tmp_path / "outside.txt", tmp_path / "node" / "planted"
    assert report[f"write {outside}"].startswith("refused")
    assert report[f"write {planted}"].startswith("refused")
    assert report[f"read {tmp_path / 'node' / 'node.key'}"].startswith("refused")
    assert next(v for k, v in report.items() if k.startswith("connect")).startswith("refused")
    assert report["scratch"] == "refused: File too large"  # over --task-output-size
    assert not outside.exists() and not planted.exists()


async def test_scratch_dir_is_writable_under_isolation(
    tmp_path: Path, coordinator: FakeCoordinator
) -> None:
    _isolation_or_skip(tmp_path)
    report = await _run_escape(tmp_path, coordinator)
    assert report["scratch"] == "done"


async def test_without_isolation_the_same_executor_gets_out(
    tmp_path: Path, coordinator: FakeCoordinator
) -> None:
    report = await _run_escape(tmp_path, coordinator, sandbox="off")
    assert report[f"write {tmp_path / 'outside.txt'}"] == "done"
    assert next(v for k, v in report.items() if k.startswith("connect")) == "done"
    assert (tmp_path / "outside.txt").read_text() == "escaped"


def test_the_executor_is_the_oom_killers_first_pick(tmp_path: Path) -> None:
    """A task that takes all the machine's memory is what the kernel ends when it runs out,
    never the volunteer's browser or game: the child raises its own OOM score to the top."""
    code = (
        "from sparegrid.worker.slots.child.sandbox import SandboxSettings, set_limits\n"
        f"print(set_limits(SandboxSettings(scratch={str(tmp_path)!r})))\n"
        "print(open('/proc/self/oom_score_adj').read().strip())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    report, score = done.stdout.strip().splitlines()
    assert "first for the OOM killer" in report and score == "1000"
    here = Path("/proc/self/oom_score_adj").read_text().strip()
    assert here != "1000"  # the daemon (this process) is left as it was
