"""Damaged local state on the volunteer's disk: the worker starts anyway, or says in one
line which file to fix."""

import logging
from pathlib import Path

import pytest

from sparegrid.v1 import common_pb2, worker_pb2
from sparegrid.wire import Signer
from sparegrid.worker.testing.coordinator import FakeCoordinator, is_kind
from sparegrid.worker.testing.harness import assignment, make_config, running_worker
from sparegrid.worker.upstream.outbox import Outbox


def _pending(outbox: Outbox, signer: Signer, batch_id: int) -> worker_pb2.WorkerMessage:
    statement = common_pb2.ResultStatement(attempt_id=f"a{batch_id}", node_id=signer.node_id)
    results = worker_pb2.Results(batch_id=batch_id, statements=[statement.SerializeToString()])
    return worker_pb2.WorkerMessage(results=results)


@pytest.mark.parametrize("damage", [b"", b"\x00\x00\x00", b"12ab", b"9" * 5000])
async def test_a_damaged_batch_counter_is_recovered_from_the_outbox(
    tmp_path: Path, damage: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    signer = Signer.generate()
    outbox = Outbox(tmp_path)
    outbox.load()
    await outbox.put(_pending(outbox, signer, 41), {})
    (tmp_path / "batch_seq").write_bytes(damage)
    reopened = Outbox(tmp_path)
    with caplog.at_level(logging.WARNING, "sparegrid.worker.upstream.outbox"):
        assert reopened.load() == 1
    assert reopened.next_batch_id() == 42
    assert "batch_seq" in caplog.text and "highest batch id" in caplog.text
    assert Outbox(tmp_path).load() == 1  # the file was written again: no warning next time
    assert (tmp_path / "batch_seq").read_text().isdigit()


async def test_a_worker_with_an_empty_batch_counter_starts_and_resends(
    tmp_path: Path, coordinator: FakeCoordinator
) -> None:
    """An empty batch_seq (a crash while the disk was full) stopped the worker at start
    with a ValueError traceback; it now starts, sends the pending batch, and numbers new
    batches after it."""
    config = make_config(tmp_path, coordinator.address)
    async with running_worker(config) as (worker, _):  # first start makes the node key
        await coordinator.session()
        node_signer = worker.signer
    outbox = Outbox(tmp_path)
    outbox.load()
    await outbox.put(_pending(outbox, node_signer, 7), {})
    (tmp_path / "batch_seq").write_bytes(b"")
    async with running_worker(config) as (worker, _):
        session = await coordinator.session(2)
        [resent] = await session.wait_for(is_kind("results"))
        assert resent.results.batch_id == 7
        session.assign(assignment("fresh"))
        batches = await session.wait_for(is_kind("results"), count=2)
        assert batches[-1].results.batch_id > 7
