"""The input cache and the outbox on their own."""

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sparegrid.v1 import common_pb2, worker_pb2
from sparegrid.wire import Signer
from sparegrid.wire.clock import FakeClock, SystemClock
from sparegrid.wire.receipt import verify_batch
from sparegrid.worker.errors import BlobUnavailable, DigestMismatch
from sparegrid.worker.slots.cache import BlobCache
from sparegrid.worker.upstream.batcher import MAX_INLINE_BYTES, ResultBatcher
from sparegrid.worker.upstream.outbox import Outbox, batch_id_of


class FakeFetch:
    def __init__(self, data: bytes, fail_after: int | None = None) -> None:
        self.data = data
        self.calls: list[int] = []
        self.fail_after = fail_after
        self.gate = asyncio.Event()
        self.gate.set()

    async def __call__(self, digest: str, offset: int) -> AsyncIterator[bytes]:
        self.calls.append(offset)
        await self.gate.wait()
        for start in range(offset, len(self.data), 1000):
            if self.fail_after is not None and start - offset >= self.fail_after:
                self.fail_after = None
                raise BlobUnavailable("connection dropped")
            yield self.data[start : start + 1000]


async def test_concurrent_gets_download_once(tmp_path: Path) -> None:
    data = b"abc" * 5000
    digest = hashlib.sha256(data).hexdigest()
    fetch = FakeFetch(data)
    fetch.gate.clear()
    cache = BlobCache(tmp_path, SystemClock())
    gets = [asyncio.create_task(cache.get(digest, len(data), fetch)) for _ in range(5)]
    await asyncio.sleep(0.01)
    fetch.gate.set()
    paths = await asyncio.gather(*gets)
    assert fetch.calls == [0]
    assert len(set(paths)) == 1 and paths[0].read_bytes() == data
    assert paths[0] == tmp_path / "sha256" / digest[:2] / digest
    assert await cache.get(digest, len(data), fetch) == paths[0] and fetch.calls == [0]


async def test_wrong_bytes_are_refused_and_never_visible(tmp_path: Path) -> None:
    digest = hashlib.sha256(b"expected").hexdigest()
    cache = BlobCache(tmp_path, SystemClock())
    with pytest.raises(DigestMismatch):
        await cache.get(digest, 0, FakeFetch(b"tampered"))
    assert not list((tmp_path / "sha256").rglob("*"))[1:]  # only the <ab> directory


async def test_interrupted_download_resumes_from_the_partial_file(tmp_path: Path) -> None:
    data = bytes(range(256)) * 40
    digest = hashlib.sha256(data).hexdigest()
    fetch = FakeFetch(data, fail_after=3000)
    cache = BlobCache(tmp_path, SystemClock(), retry_delay=0.001)
    path = await cache.get(digest, len(data), fetch)
    assert fetch.calls == [0, 3000]
    assert path.read_bytes() == data


def results_message(outbox: Outbox, signer: Signer, attempt: str) -> worker_pb2.WorkerMessage:
    statement = common_pb2.ResultStatement(attempt_id=attempt, node_id=signer.node_id)
    data = statement.SerializeToString()
    results = worker_pb2.Results(batch_id=outbox.next_batch_id(), statements=[data])
    return worker_pb2.WorkerMessage(results=results)


async def test_outbox_keeps_batches_until_acked_across_reopen(tmp_path: Path) -> None:
    signer = Signer.generate()
    outbox = Outbox(tmp_path)
    assert outbox.load() == 0
    first = results_message(outbox, signer, "a1")
    second = results_message(outbox, signer, "a2")
    await outbox.put(first, {})
    await outbox.put(second, {})
    assert outbox.ack(first.results.batch_id)
    assert not outbox.ack(first.results.batch_id)

    reopened = Outbox(tmp_path)
    assert reopened.load() == 1
    [entry] = reopened.pending()
    assert entry.message == second
    assert reopened.next_batch_id() > second.results.batch_id


async def test_outbox_blobs_live_until_no_batch_needs_them(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path)
    outbox.load()
    ref = common_pb2.OutputRef(name="out", digest="d" * 64, size=3)
    statement = common_pb2.ResultStatement(attempt_id="a", outputs=[ref]).SerializeToString()
    ids = []
    for _ in range(2):
        batch_id = outbox.next_batch_id()
        message = worker_pb2.WorkerMessage(
            results=worker_pb2.Results(batch_id=batch_id, statements=[statement])
        )
        await outbox.put(message, {"d" * 64: b"big"})
        ids.append(batch_id)
    reopened = Outbox(tmp_path)
    reopened.load()
    assert [e.blobs for e in reopened.pending()] == [("d" * 64,), ("d" * 64,)]
    reopened.ack(ids[0])
    assert reopened.blob_path("d" * 64).read_bytes() == b"big"
    reopened.ack(ids[1])
    assert not reopened.blob_path("d" * 64).exists()


def test_batch_ids_are_never_reused_after_a_restart(tmp_path: Path) -> None:
    first = Outbox(tmp_path)
    first.load()
    used = [first.next_batch_id() for _ in range(3)]
    second = Outbox(tmp_path)
    second.load()
    assert second.next_batch_id() > max(used)


async def test_batches_are_signed_and_split_by_count_and_inline_size(tmp_path: Path) -> None:
    signer = Signer.generate()
    outbox = Outbox(tmp_path)
    outbox.load()
    batcher = ResultBatcher(signer, outbox, SystemClock(), window=10.0, max_items=3)
    big = b"x" * (MAX_INLINE_BYTES // 2 + 1)
    for i in range(4):
        statement = common_pb2.ResultStatement(attempt_id=f"a{i}").SerializeToString()
        batcher.add_result(statement, {f"{i:064x}": big if i < 2 else b"s"}, {})
    batcher.add_failure(worker_pb2.TaskFailure(attempt_id="f", code="TIMEOUT"))
    await batcher.close()
    batches = [e.message for e in outbox.pending()]
    results = [m.results for m in batches if m.WhichOneof("body") == "results"]
    assert [len(r.statements) for r in results] == [1, 3]  # the big ones may not share one
    for batch in results:
        verify_batch(signer.public_key, list(batch.statements), batch.signature)
    [failures] = [m.failures for m in batches if m.WhichOneof("body") == "failures"]
    assert failures.failures[0].attempt_id == "f"
    assert len({batch_id_of(m) for m in batches}) == 3


async def test_results_gather_into_one_batch_while_the_coordinator_is_behind(
    tmp_path: Path,
) -> None:
    signer = Signer.generate()
    outbox = Outbox(tmp_path)
    outbox.load()
    clock = FakeClock()  # the batch window passes as soon as the batcher sleeps on it
    batcher = ResultBatcher(signer, outbox, clock, window=0.5, max_items=100, max_unacked=1)

    def finish(i: int) -> None:
        statement = common_pb2.ResultStatement(attempt_id=f"a{i}").SerializeToString()
        batcher.add_result(statement, {}, {})

    async def outbox_holds(count: int) -> None:
        async with asyncio.timeout(10):
            while len(outbox) != count:
                await outbox.change_event().wait()

    finish(0)
    await outbox_holds(1)  # sent at once: nothing was unacknowledged
    for i in range(1, 6):  # the first batch is not acknowledged yet: these wait
        finish(i)
        for _ in range(5):  # this result's window passes on the fake clock
            await asyncio.sleep(0)
    assert clock.monotonic() >= 1000.5 and len(outbox) == 1
    outbox.ack(outbox.pending()[0].batch_id)
    await outbox_holds(1)
    [entry] = outbox.pending()
    assert len(entry.message.results.statements) == 5  # one batch, one signature
    await batcher.close()


async def test_a_lost_session_s_flush_is_not_stuck_behind_one_waiting_for_acks(
    tmp_path: Path,
) -> None:
    """A worker whose coordinator was SIGKILLed while results waited for acknowledgement
    flushes everything before reconnecting; that flush used to wait forever for the lock
    held by a flush waiting for acks only a session could bring: the worker never
    reconnected to the standby that took over (found failing over on PostgreSQL)."""
    signer = Signer.generate()
    outbox = Outbox(tmp_path)
    outbox.load()
    clock = FakeClock()
    batcher = ResultBatcher(signer, outbox, clock, window=0.5, max_items=100, max_unacked=1)
    first = common_pb2.ResultStatement(attempt_id="a0").SerializeToString()
    batcher.add_result(first, {}, {})
    async with asyncio.timeout(10):
        while len(outbox) != 1:
            await outbox.change_event().wait()
    later = common_pb2.ResultStatement(attempt_id="a1").SerializeToString()
    batcher.add_result(later, {}, {})  # waits for the first batch's ack, which never comes
    for _ in range(10):
        await asyncio.sleep(0)
    async with asyncio.timeout(5):
        await batcher.flush()  # what a worker does before it reconnects
    assert len(outbox) == 2 and len(batcher) == 0
    await batcher.close()


def test_a_deep_flow_window_is_refilled_in_quarters() -> None:
    from sparegrid.worker.upstream.flow import FlowWindow

    window = FlowWindow(prefetch=8, devices=[0])
    assert window.top_up(0, held=0) == 8
    for _ in range(8):
        window.assigned(0)
    assert window.top_up(0, held=7) == 0  # one free slot: not worth a message yet
    assert window.top_up(0, held=6) == 2  # a quarter of the window
    shallow = FlowWindow(prefetch=2, devices=[0])
    assert shallow.top_up(0, held=0) == 2
    shallow.assigned(0)
    shallow.assigned(0)
    assert shallow.top_up(0, held=1) == 1  # a GPU-sized window refills one by one


def test_the_default_window_covers_the_round_trip_at_the_device_s_pace() -> None:
    from sparegrid.worker.upstream.flow import ADAPTIVE_MAX, ADAPTIVE_START, FlowWindow

    flow = FlowWindow(None, devices=[0, 1])
    assert flow.window(0) == ADAPTIVE_START  # nothing measured yet
    assert flow.top_up(0, held=0, now=10.0) == ADAPTIVE_START
    flow.assigned(0, now=10.3)  # the assignment came 300 ms after the grant
    assert flow.round_trip == pytest.approx(0.3)
    for _ in range(20):
        flow.finished(0, 0.002)  # tiny tasks: 2 ms each
        flow.finished(1, 30.0)  # long tasks
    assert flow.window(0) == 2 * 0.3 / 0.002 + 1  # two round trips of tasks in hand
    assert flow.window(1) == 2  # the one running and the next
    flow.finished(0, 1e-9)
    for _ in range(100):
        flow.finished(0, 0.0)
    assert flow.window(0) == ADAPTIVE_MAX  # bounded however cheap the tasks look


def test_the_round_trip_is_the_least_recent_sample() -> None:
    from sparegrid.worker.upstream.flow import FlowWindow

    flow = FlowWindow(None, devices=[0])
    flow.top_up(0, held=0, now=0.0)  # 2 units granted at t=0
    flow.assigned(0, now=5.0)  # the coordinator had no work for 5 s: not the link
    flow.finished(0, 0.01)
    flow.top_up(0, held=0, now=6.0)
    flow.assigned(0, now=6.05)  # the unit left from t=0 answers first, then t=6
    flow.assigned(0, now=6.06)
    assert flow.round_trip == pytest.approx(0.06)
    flow.revoke(0)  # grants of a paused device time nothing
    flow.assigned(0, now=100.0)
    assert flow.round_trip == pytest.approx(0.06)


def test_a_set_prefetch_pins_the_window() -> None:
    from sparegrid.worker.upstream.flow import FlowWindow

    flow = FlowWindow(5, devices=[0])
    flow.top_up(0, held=0, now=0.0)
    flow.assigned(0, now=1.0)
    flow.finished(0, 0.001)
    assert flow.window(0) == 5
