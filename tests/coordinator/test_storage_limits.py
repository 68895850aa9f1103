"""Filling the coordinator's disk, attempted over real gRPC on SQLite and PostgreSQL:
uploads under random digests, partial uploads left to lie, blobs nobody needs, and node
keys registered by the thousand. Quotas refuse with QUOTA_EXCEEDED, the sweeps delete."""

import asyncio
import hashlib
import os
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc import aio

from sparegrid.coordinator.app import App
from sparegrid.coordinator.clock import FakeClock
from sparegrid.coordinator.domain import AttemptState, JobState, TaskState
from sparegrid.coordinator.services.jobs import JobSpec
from sparegrid.coordinator.services.quotas import QuotaConfig
from sparegrid.coordinator.services.sweeper import DAY, SweepConfig, Swept
from sparegrid.coordinator.settings import Settings
from sparegrid.coordinator.store.base import Store
from sparegrid.v1 import (
    blob_pb2,
    blob_pb2_grpc,
    client_pb2,
    client_pb2_grpc,
    common_pb2,
    worker_pb2,
)
from sparegrid.wire import Signer, sha256_hex
from sparegrid.wire.receipt import sign_batch
from sparegrid.worker.testing.harness import wait_until
from tests.coordinator.conftest import Served, accounts_of, code_of, serving, store_kinds
from tests.coordinator.sessions import next_ack, session

KiB = 1 << 10
QUOTAS = QuotaConfig(
    in_flight=300 * KiB, stored=600 * KiB, anonymous_in_flight=250 * KiB, anonymous_stored=400 * KiB
)
Metadata = tuple[tuple[str, str], ...]


@pytest.fixture(params=store_kinds())
async def grid(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Served]:
    """A coordinator with small quotas and a fake clock; sweeps run when a test says."""
    settings = Settings(
        data_dir=tmp_path,
        max_blob_size=200 * KiB,
        quotas=QUOTAS,
        sweeps=SweepConfig(interval=1e9, page=3),  # small pages: several steps each
        reap_interval_seconds=1e9,  # the fake clock jumps days: no lease runs out here
        max_attempt_seconds=30 * DAY,
    )

    def make(store: Store) -> App:
        # fake time from now on: files' times (partial uploads, blobs) are real ones
        return App(store, settings, clock=FakeClock(time.time()))

    async with serving(request.param, tmp_path, make) as (app, address, channel):
        yield accounts_of(app, address, channel, tmp_path, credit=1000)


def clock(grid: Served) -> FakeClock:
    assert isinstance(grid.app.clock, FakeClock)
    return grid.app.clock


async def upload(
    grid: Served,
    md: Metadata,
    data: bytes,
    *,
    stop: int | None = None,
    attempt_ids: tuple[str, ...] = (),
    size: int | None = None,
) -> blob_pb2.UploadBlobResponse:
    """Uploads data; with `stop`, only data[:stop], then hangs up (a partial upload)."""
    stub = blob_pb2_grpc.BlobServiceStub(grid.channel)
    digest = hashlib.sha256(data).hexdigest()
    header = blob_pb2.BlobHeader(
        digest=digest, size=len(data) if size is None else size, attempt_ids=attempt_ids
    )

    async def parts() -> AsyncIterator[blob_pb2.UploadBlobRequest]:
        yield blob_pb2.UploadBlobRequest(header=header)
        end = len(data) if stop is None else stop
        for i in range(0, end, 64 * KiB):
            yield blob_pb2.UploadBlobRequest(chunk=data[i : min(end, i + 64 * KiB)])

    response: blob_pb2.UploadBlobResponse = await stub.UploadBlob(parts(), metadata=md)
    return response


async def partial(grid: Served, md: Metadata, size: int) -> str:
    """Begins an upload of `size` random bytes and breaks it off after one byte."""
    data = os.urandom(size)
    with pytest.raises(aio.AioRpcError) as err:
        await upload(grid, md, data, stop=1)
    assert code_of(err.value) == "UPLOAD_INCOMPLETE"
    digest = hashlib.sha256(data).hexdigest()
    for path in (grid.app.blobs.root / "partial").glob(f"*-{digest}"):
        os.utime(path, (clock(grid).now(), clock(grid).now()))  # written at the fake now
    return digest


async def refused(coro: "asyncio.Future[object] | object") -> aio.AioRpcError:
    with pytest.raises(aio.AioRpcError) as err:
        await coro  # type: ignore[misc]
    return err.value


def session_md(grid: Served, node_id: str) -> Metadata:
    token = next(t for t, n in grid.app.session_tokens.items() if n == node_id)
    return (("authorization", f"Session {token}"),)


async def leased_node(grid: Served, owner_key: str = "") -> tuple[Signer, str, list[str], object]:
    """A node with a session holding two leased echo tasks: (signer, node id, attempts, call)."""
    client = client_pb2_grpc.ClientServiceStub(grid.channel)
    spec = client_pb2.JobSpec(kind="echo", params=b'{"tasks": 2}')
    await client.SubmitJob(client_pb2.SubmitJobRequest(spec=spec), metadata=grid.auth(grid.bob_key))
    signer = Signer.generate()
    call, node_id = await session(grid, signer, owner_key)
    await call.write(worker_pb2.WorkerMessage(credit=worker_pb2.Credit(device_index=0, count=4)))
    assigned = []
    while len(assigned) < (2 if owner_key else 1):  # an anonymous node holds one task
        assigned += (await call.read()).assign.assignments
    return signer, node_id, [a.attempt_id for a in assigned], call


# --- quotas ------------------------------------------------------------------------------


async def test_an_account_cannot_open_uploads_past_its_in_flight_quota(grid: Served) -> None:
    """Uploads begun under random digests and left unfinished had no limit at all."""
    alice = grid.auth(grid.alice_key)
    await partial(grid, alice, 150 * KiB)
    await partial(grid, alice, 150 * KiB)
    error = await refused(upload(grid, alice, os.urandom(10 * KiB), stop=1))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert code_of(error) == "QUOTA_EXCEEDED"
    details = error.details() or ""
    assert "account 'alice'" in details and "--in-flight-quota" in details
    await partial(grid, grid.auth(grid.bob_key), 150 * KiB)  # bob's quota is his own
    assert len(list((grid.app.blobs.root / "partial").iterdir())) == 3  # nothing written


async def test_a_resumed_upload_keeps_its_reservation(grid: Served) -> None:
    alice = grid.auth(grid.alice_key)
    data = os.urandom(150 * KiB)
    with pytest.raises(aio.AioRpcError):
        await upload(grid, alice, data, stop=64 * KiB)
    await partial(grid, alice, 150 * KiB)
    stub = blob_pb2_grpc.BlobServiceStub(grid.channel)
    digest = hashlib.sha256(data).hexdigest()
    stat = await stub.StatBlob(blob_pb2.StatBlobRequest(digest=digest), metadata=alice)
    assert stat.partial_size == 64 * KiB

    async def rest() -> AsyncIterator[blob_pb2.UploadBlobRequest]:
        header = blob_pb2.BlobHeader(digest=digest, size=len(data), offset=64 * KiB)
        yield blob_pb2.UploadBlobRequest(header=header)
        yield blob_pb2.UploadBlobRequest(chunk=data[64 * KiB :])

    done = await stub.UploadBlob(rest(), metadata=alice)
    assert done.received == len(data) - 64 * KiB
    assert grid.app.store.usage("alice") == (150 * KiB, 150 * KiB)


async def test_a_resumed_upload_cannot_announce_less_than_it_has_sent(grid: Served) -> None:
    """Resuming with size 1 and no chunks published the whole partial file, reserved and
    charged as 1 byte: any account stored past its quotas, 16 GiB a blob."""
    alice = grid.auth(grid.alice_key)
    body = os.urandom(150 * KiB)
    error = await refused(upload(grid, alice, body, size=len(body) + 1))  # one byte short
    assert code_of(error) == "UPLOAD_INCOMPLETE"
    digest = hashlib.sha256(body).hexdigest()
    stub = blob_pb2_grpc.BlobServiceStub(grid.channel)

    async def lie() -> AsyncIterator[blob_pb2.UploadBlobRequest]:
        header = blob_pb2.BlobHeader(digest=digest, size=1, offset=len(body))
        yield blob_pb2.UploadBlobRequest(header=header)

    error = await refused(stub.UploadBlob(lie(), metadata=alice))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(error) == "SIZE_MISMATCH"
    assert f"{len(body)} bytes stored already" in (error.details() or "")
    assert grid.app.blobs.size(digest) is None  # nothing published
    assert grid.app.store.usage("alice") == (len(body) + 1, 0)  # the reservation as it was
    stat = await stub.StatBlob(blob_pb2.StatBlobRequest(digest=digest), metadata=alice)
    assert (stat.exists, stat.partial_size) == (False, len(body))  # still to resume


async def test_stored_uploads_count_until_the_stored_quota(grid: Served) -> None:
    alice = grid.auth(grid.alice_key)
    for _ in range(3):
        await upload(grid, alice, os.urandom(190 * KiB))
    error = await refused(upload(grid, alice, os.urandom(100 * KiB)))
    assert code_of(error) == "QUOTA_EXCEEDED" and "--stored-quota" in (error.details() or "")
    again = await upload(grid, alice, os.urandom(10 * KiB))  # what still fits, fits
    assert again.received == 10 * KiB


async def test_a_wrong_digest_gives_its_reservation_back(grid: Served) -> None:
    alice = grid.auth(grid.alice_key)
    data = os.urandom(150 * KiB)
    stub = blob_pb2_grpc.BlobServiceStub(grid.channel)

    async def wrong() -> AsyncIterator[blob_pb2.UploadBlobRequest]:
        header = blob_pb2.BlobHeader(digest="0" * 64, size=len(data))
        yield blob_pb2.UploadBlobRequest(header=header)
        yield blob_pb2.UploadBlobRequest(chunk=data)

    for _ in range(3):
        error = await refused(stub.UploadBlob(wrong(), metadata=alice))
        assert code_of(error) == "DIGEST_MISMATCH"
    assert grid.app.store.usage("alice") == (0, 0)


async def test_a_worker_uploads_only_outputs_of_attempts_it_runs(served: Served) -> None:
    """Any self-registered node could upload 16 GiB blobs under random digests: it named
    no attempt at all."""
    _, node_id, attempts, call = await leased_node(served)
    md = session_md(served, node_id)
    error = await refused(upload(served, md, os.urandom(10 * KiB)))
    assert (error.code(), code_of(error)) == (grpc.StatusCode.INVALID_ARGUMENT, "BAD_UPLOAD")
    assert "outputs only" in (error.details() or "")
    done = await upload(served, md, os.urandom(10 * KiB), attempt_ids=(attempts[0],))
    assert done.received == 10 * KiB
    call.cancel()  # type: ignore[attr-defined]


async def test_a_worker_cannot_upload_for_an_attempt_that_ended(served: Served) -> None:
    _, node_id, attempts, call = await leased_node(served)
    md = session_md(served, node_id)
    attempt = served.app.store.get_attempts(attempts)[0]
    attempt.state = attempt.state.EXPIRED
    served.app.store.update_attempts([attempt])
    error = await refused(upload(served, md, os.urandom(10 * KiB), attempt_ids=(attempt.id,)))
    assert (error.code(), code_of(error)) == (grpc.StatusCode.PERMISSION_DENIED, "NOT_LEASED")
    assert "expired" in (error.details() or "")
    call.cancel()  # type: ignore[attr-defined]


async def test_anonymous_nodes_share_one_pool_and_owned_nodes_their_owner(grid: Served) -> None:
    """A fresh node key costs nothing: a quota per key alone would be no limit."""
    anonymous = [await leased_node(grid) for _ in range(2)]
    owned = [await leased_node(grid, grid.alice_key) for _ in range(2)]

    async def begin(node: tuple[Signer, str, list[str], object], size: int) -> aio.AioRpcError:
        md, attempt = session_md(grid, node[1]), node[2][0]
        return await refused(upload(grid, md, os.urandom(size), stop=1, attempt_ids=(attempt,)))

    assert code_of(await begin(anonymous[0], 150 * KiB)) == "UPLOAD_INCOMPLETE"
    error = await begin(anonymous[1], 150 * KiB)
    assert code_of(error) == "QUOTA_EXCEEDED"
    details = error.details() or ""
    assert "without an owner account together" in details and "SPAREGRID_OWNER_KEY" in details
    # two nodes of alice share alice's quota, which her own uploads count against too
    await partial(grid, grid.auth(grid.alice_key), 100 * KiB)
    assert code_of(await begin(owned[0], 150 * KiB)) == "UPLOAD_INCOMPLETE"
    error = await begin(owned[1], 100 * KiB)
    assert code_of(error) == "QUOTA_EXCEEDED" and "account 'alice'" in (error.details() or "")
    for node in anonymous + owned:
        node[3].cancel()  # type: ignore[attr-defined]


# --- outputs sent inline -----------------------------------------------------------------


async def inline_results(
    grid: Served,
    signer: Signer,
    call: object,
    outs: dict[str, bytes],
    batch_id: int = 1,
    assigned: list[worker_pb2.Assignment] | None = None,
) -> list[worker_pb2.AttemptVerdict]:
    """One signed batch: a result per attempt, its output `outs[attempt]` sent inline.
    Assignments that come before its answer are put in `assigned`."""
    found = {a.id: a for a in grid.app.store.get_attempts(list(outs))}
    statements = [
        common_pb2.ResultStatement(
            job_id=found[attempt_id].job_id,
            task_id=found[attempt_id].task_id,
            attempt_id=attempt_id,
            node_id=signer.node_id,
            outputs=[common_pb2.OutputRef(name="out", digest=sha256_hex(data), size=len(data))],
        ).SerializeToString()
        for attempt_id, data in outs.items()
    ]
    results = worker_pb2.Results(
        batch_id=batch_id,
        statements=statements,
        signature=sign_batch(signer, statements),
        inline_outputs={sha256_hex(data): data for data in outs.values()},
    )
    await call.write(worker_pb2.WorkerMessage(results=results))  # type: ignore[attr-defined]
    while (message := await call.read()).WhichOneof("body") != "result_ack":  # type: ignore[attr-defined]
        if assigned is not None:  # else new assignments, credited: not looked at
            assigned += message.assign.assignments
    return list(message.result_ack.verdicts)


async def test_inline_outputs_count_against_the_node_owners_stored_quota(grid: Served) -> None:
    """A worker's outputs sent inline went into the database charged to nobody: up to
    16 MiB per task it was given."""
    app = grid.app
    signer, _, attempts, call = await leased_node(grid, grid.alice_key)
    first, second = os.urandom(350 * KiB), os.urandom(350 * KiB)
    outs = dict(zip(attempts, (first, second), strict=True))
    taken, over = await inline_results(grid, signer, call, outs)
    assert taken.accepted, taken.message
    assert not over.accepted and over.code == "QUOTA_EXCEEDED" and over.credit == 0
    assert "account 'alice'" in over.message and "--stored-quota" in over.message
    assert app.store.get_inline_blob(sha256_hex(second)) is None  # nothing kept
    assert app.store.usage("alice") == (0, 350 * KiB)
    assert app.reputations.get(signer.node_id).strikes == 0  # an honest node may be full
    # the worker sends no other result for the attempt: it ends, given back, and its task
    # is queued again; alice's nodes get no task for a while (she has no room for outputs),
    # and her client hears why its job waits
    [attempt] = app.store.get_attempts([attempts[1]])
    assert (attempt.state, attempt.error_code) == (AttemptState.FAILED, "QUOTA_EXCEEDED")
    [task] = app.store.get_tasks([attempt.task_id])
    assert (task.state, task.attempts) == (TaskState.QUEUED, 0)
    app.scheduler.dispatch()  # alice's node has credit left: it is not given the task
    assert app.store.get_tasks([attempt.task_id])[0].state == TaskState.QUEUED
    waiting = app.scheduler.waiting(app.scheduler.jobs[attempt.job_id])
    assert "1 owner(s) over their stored quota" in waiting, waiting
    # a result for the ended attempt, even one that fits, is refused and charges nothing
    [again] = await inline_results(grid, signer, call, {attempts[1]: first}, batch_id=2)
    assert (again.accepted, again.code, again.credit) == (False, "STALE", 0)
    assert app.store.usage("alice") == (0, 350 * KiB)
    # a node of another owner takes the task at once, and the job ends, each result paid
    # once and the refused one not at all
    other = Signer.generate()
    other_call, _ = await session(grid, other, grid.bob_key)
    grant = worker_pb2.Credit(device_index=0, count=1)
    await other_call.write(worker_pb2.WorkerMessage(credit=grant))
    [held] = (await other_call.read()).assign.assignments
    assert held.task_id == task.id
    [taken] = await inline_results(grid, other, other_call, {held.attempt_id: b"ok"})
    assert taken.accepted and taken.credit == 1, taken.message
    job = app.store.get_job(task.job_id)
    assert job is not None and job.state == JobState.SUCCEEDED
    paid = {f"node:{signer.node_id}": 1, f"node:{other.node_id}": 1}
    assert app.store.balances("node:") == paid
    assert app.store.balance("client:bob") == 1000 - 2
    for each in (call, other_call):
        each.cancel()  # type: ignore[attr-defined]


async def test_an_owner_over_its_quota_takes_work_again_once_it_has_room(grid: Served) -> None:
    """A full owner's nodes kept off its jobs for good before (each refusal counted as a
    failure of the node within the job): with every owner full, a job stalled for ever,
    saying it needed "a node that has not failed its tasks". Now the owner is tried again
    after a pause, and the job ends once there is room."""
    app = grid.app
    signer, _, attempts, call = await leased_node(grid, grid.alice_key)
    too_big = {attempt: os.urandom(700 * KiB // 2) for attempt in attempts}
    too_big[attempts[1]] = os.urandom(700 * KiB)  # past the 600 KiB quota on its own
    first, over = await inline_results(grid, signer, call, too_big)
    assert first.accepted and over.code == "QUOTA_EXCEEDED"
    [attempt] = app.store.get_attempts([attempts[1]])
    job = app.scheduler.jobs[attempt.job_id]
    assert "over their stored quota" in app.scheduler.waiting(job)
    app.quotas.config = replace(app.quotas.config, stored=2 << 20)  # the operator makes room
    clock(grid).advance(app.scheduler.config.full_owner_pause_seconds)
    await call.write(worker_pb2.WorkerMessage(credit=worker_pb2.Credit(device_index=0, count=1)))  # type: ignore[attr-defined]
    while not (assigned := (await call.read()).assign.assignments):  # type: ignore[attr-defined]
        pass
    assert [a.task_id for a in assigned] == [attempt.task_id]  # the same task, tried again
    [taken] = await inline_results(grid, signer, call, {assigned[0].attempt_id: b"ok"}, 2)
    assert taken.accepted, taken.message
    done = app.store.get_job(attempt.job_id)
    assert done is not None and done.state == JobState.SUCCEEDED
    assert app.ledger.check().balanced
    call.cancel()  # type: ignore[attr-defined]


async def test_a_batchs_inline_outputs_are_looked_up_in_one_read(
    grid: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Which inline blobs are charged already is read once for the batch (on PostgreSQL a
    read is a round trip), not once per result nor again when they are written; and only
    for what its results name that holds bytes: an empty output costs no read."""
    app = grid.app
    signer, _, attempts, call = await leased_node(grid, grid.alice_key)
    reads: list[str] = []
    real = app.store._query  # type: ignore[attr-defined]

    def counting(sql: str, params: Any = ()) -> list[Any]:
        if "blob_charges" in sql:
            reads.append(sql)
        return real(sql, params)

    monkeypatch.setattr(app.store, "_query", counting)
    outs = {attempt: os.urandom(10 * KiB) for attempt in attempts}
    assert all(v.accepted for v in await inline_results(grid, signer, call, outs))
    assert len(reads) == 1 and app.store.usage("alice") == (0, 20 * KiB)
    call.cancel()  # type: ignore[attr-defined]
    reads.clear()
    signer, _, attempts, call = await leased_node(grid, grid.alice_key)
    outs = {attempt: b"" for attempt in attempts}
    assert all(v.accepted for v in await inline_results(grid, signer, call, outs))
    assert reads == [] and app.store.usage("alice") == (0, 20 * KiB)
    call.cancel()  # type: ignore[attr-defined]


async def test_a_full_anonymous_pool_keeps_every_node_without_an_owner_from_new_tasks(
    grid: Served,
) -> None:
    """A refusal for the pool's quota paused only the node refused: each fresh node key, a
    node without an owner account, could take a task, do it and have its result refused,
    one task a minute per key, while the pool stayed full."""
    app = grid.app
    signer, _, [attempt_id], call = await leased_node(grid)
    [verdict] = await inline_results(grid, signer, call, {attempt_id: os.urandom(450 * KiB)})
    assert verdict.code == "QUOTA_EXCEEDED"  # its own 600 KiB quota, not the 400 KiB pool's
    assert "without an owner account together" in verdict.message
    [attempt] = app.store.get_attempts([attempt_id])
    fresh = Signer.generate()
    fresh_call, _ = await session(grid, fresh)
    grant = worker_pb2.Credit(device_index=0, count=2)
    await fresh_call.write(worker_pb2.WorkerMessage(credit=grant))
    sessions = app.scheduler.sessions.values()
    await wait_until(lambda: any(s.node.id == fresh.node_id and s.granted for s in sessions))
    app.scheduler.dispatch()
    tasks = app.store.list_tasks(attempt.job_id)
    assert [t.state for t in tasks] == [TaskState.QUEUED] * 2  # the fresh key got neither
    waiting = app.scheduler.waiting(app.scheduler.jobs[attempt.job_id])
    assert "share --anonymous-stored-quota, full" in waiting, waiting
    owned, _ = await session(grid, Signer.generate(), grid.alice_key)  # a node with an owner
    await owned.write(worker_pb2.WorkerMessage(credit=grant))
    assigned = (await owned.read()).assign.assignments
    assert {a.task_id for a in assigned} == {t.id for t in tasks}  # takes them at once
    for each in (call, fresh_call, owned):
        each.cancel()  # type: ignore[attr-defined]


async def test_inline_outputs_of_anonymous_nodes_count_against_their_pool(grid: Served) -> None:
    uploader, sender = await leased_node(grid), await leased_node(grid)
    md = session_md(grid, uploader[1])
    data = os.urandom(150 * KiB)
    error = await refused(upload(grid, md, data, stop=1, attempt_ids=(uploader[2][0],)))
    assert code_of(error) == "UPLOAD_INCOMPLETE"  # 150 KiB in flight
    signer, call = sender[0], sender[3]
    assigned: list[worker_pb2.Assignment] = []
    outs = {sender[2][0]: os.urandom(300 * KiB)}
    [verdict] = await inline_results(grid, signer, call, outs, assigned=assigned)
    assert verdict.code == "QUOTA_EXCEEDED"  # 150 KiB in flight and 300 KiB over 400 KiB
    assert "without an owner account together" in verdict.message
    assert "SPAREGRID_OWNER_KEY" in verdict.message
    # its attempt ended, given back; its owner (this node alone: it has no owner account)
    # is given no task for a while, then tried again
    app = grid.app
    [refused_attempt] = app.store.get_attempts([sender[2][0]])
    assert refused_attempt.state == AttemptState.FAILED and assigned == []
    [task] = app.store.get_tasks([refused_attempt.task_id])
    assert (task.state, task.attempts) == (TaskState.QUEUED, 0)
    clock(grid).advance(app.scheduler.config.full_owner_pause_seconds)
    grant = worker_pb2.Credit(device_index=0, count=1)
    await call.write(worker_pb2.WorkerMessage(credit=grant))  # type: ignore[attr-defined]
    while not assigned:
        assigned += (await call.read()).assign.assignments  # type: ignore[attr-defined]
    held = assigned[0]
    fits = os.urandom(200 * KiB)
    [verdict] = await inline_results(grid, signer, call, {held.attempt_id: fits}, batch_id=2)
    assert verdict.accepted, verdict.message
    assert grid.app.store.usage(f"node:{signer.node_id}") == (0, 200 * KiB)
    assert grid.app.store.anonymous_usage() == (150 * KiB, 200 * KiB)
    for node in (uploader, sender):
        node[3].cancel()  # type: ignore[attr-defined]


async def test_inline_outputs_are_collected_with_their_jobs_blobs(grid: Served) -> None:
    """Kept in the database for good before: now kept while their job needs them, as
    uploaded outputs are, and then deleted."""
    app = grid.app
    signer, _, attempts, call = await leased_node(grid, grid.alice_key)
    outs = {attempt: os.urandom(100 * KiB) for attempt in attempts}
    assert all(v.accepted for v in await inline_results(grid, signer, call, outs))
    [attempt] = app.store.get_attempts(attempts[:1])
    job = app.store.get_job(attempt.job_id)
    assert job is not None and job.finished_at == clock(grid).now()
    clock(grid).advance(3 * DAY - 10)  # within the retention after the job ended
    assert (await app.sweep()).blobs == 0
    assert app.store.usage("alice") == (0, 200 * KiB)
    clock(grid).advance(20)
    swept = await app.sweep()
    assert (swept.blobs, swept.blob_bytes) == (2, 200 * KiB)
    assert all(app.store.get_inline_blob(sha256_hex(data)) is None for data in outs.values())
    assert app.store.usage("alice") == (0, 0)
    assert not list((app.blobs.root / "trash").iterdir())  # no file to delete
    call.cancel()  # type: ignore[attr-defined]


# --- sweeps ------------------------------------------------------------------------------


async def test_unfinished_uploads_expire_and_free_their_quota(grid: Served) -> None:
    alice = grid.auth(grid.alice_key)
    await partial(grid, alice, 150 * KiB)
    clock(grid).advance(DAY / 2)
    await partial(grid, alice, 150 * KiB)
    clock(grid).advance(DAY / 2 + 1)
    swept = await grid.app.sweep()
    assert swept.partials == 1
    assert len(list((grid.app.blobs.root / "partial").iterdir())) == 1
    await partial(grid, alice, 150 * KiB)  # room again
    clock(grid).advance(2 * DAY)
    assert (await grid.app.sweep()).partials == 2
    assert grid.app.store.usage("alice") == (0, 0)


async def test_a_partial_file_without_a_record_expires_too(grid: Served) -> None:
    """Partial files from before uploads were recorded have only their file's age."""
    stray = grid.app.blobs.partial_path("a" * 64, "acc-old")
    stray.write_bytes(b"x" * 1000)
    old = clock(grid).now() - DAY - 1
    os.utime(stray, (old, old))
    assert (await grid.app.sweep()).partials == 1 and not stray.exists()


async def test_blobs_no_job_needs_are_collected_after_the_retention(grid: Served) -> None:
    alice, app = grid.auth(grid.alice_key), grid.app
    kept_data, lost_data = os.urandom(100 * KiB), os.urandom(100 * KiB)
    await upload(grid, alice, kept_data)
    await upload(grid, alice, lost_data)
    kept = hashlib.sha256(kept_data).hexdigest()
    lost = hashlib.sha256(lost_data).hexdigest()
    client = client_pb2_grpc.ClientServiceStub(grid.channel)
    spec = client_pb2.JobSpec(kind="checksum", params=b'{"tasks": 1}', inputs={"data": kept})
    await client.SubmitJob(client_pb2.SubmitJobRequest(spec=spec), metadata=alice)
    clock(grid).advance(3 * DAY - 10)
    assert (await app.sweep()).blobs == 0  # within the retention
    clock(grid).advance(20)
    swept = await app.sweep()
    assert (swept.blobs, swept.blob_bytes) == (1, 100 * KiB)
    assert app.blobs.size(kept) == 100 * KiB  # a queued job's input
    assert app.blobs.size(lost) is None
    assert not list((app.blobs.root / "trash").iterdir())
    assert app.store.usage("alice") == (0, 0)  # charges end with the retention
    stub = blob_pb2_grpc.BlobServiceStub(grid.channel)
    stat = await stub.StatBlob(blob_pb2.StatBlobRequest(digest=lost), metadata=alice)
    assert not stat.exists
    again = await upload(grid, alice, lost_data)  # stored afresh, readable again
    assert again.received == len(lost_data)


async def test_asking_about_a_blob_keeps_it(grid: Served) -> None:
    """A client that finds its blob stored (StatBlob) submits without uploading: the
    question restarts the retention, so the blob is there for the submit."""
    alice, app = grid.auth(grid.alice_key), grid.app
    data = os.urandom(10 * KiB)
    await upload(grid, alice, data)
    clock(grid).advance(3 * DAY - 10)
    stub = blob_pb2_grpc.BlobServiceStub(grid.channel)
    digest = hashlib.sha256(data).hexdigest()
    assert (await stub.StatBlob(blob_pb2.StatBlobRequest(digest=digest), metadata=alice)).exists
    clock(grid).advance(20)
    assert (await app.sweep()).blobs == 0 and app.blobs.size(digest) == len(data)


async def test_outputs_stay_for_the_retention_after_their_job_ends(grid: Served) -> None:
    signer, node_id, attempts, call = await leased_node(grid, grid.alice_key)
    md = session_md(grid, node_id)
    outputs = []
    for attempt in attempts:
        data = os.urandom(100 * KiB)
        await upload(grid, md, data, attempt_ids=(attempt,))
        outputs.append(hashlib.sha256(data).hexdigest())
    clock(grid).advance(2 * DAY)  # the job ends two days after its outputs were uploaded
    found = {a.id: a for a in grid.app.store.get_attempts(attempts)}
    statements = [
        common_pb2.ResultStatement(
            job_id=found[a].job_id,
            task_id=found[a].task_id,
            attempt_id=a,
            node_id=node_id,
            outputs=[common_pb2.OutputRef(name="out", digest=d, size=100 * KiB)],
        ).SerializeToString()
        for a, d in zip(attempts, outputs, strict=True)
    ]
    results = worker_pb2.Results(
        batch_id=1, statements=statements, signature=sign_batch(signer, statements)
    )
    await call.write(worker_pb2.WorkerMessage(results=results))  # type: ignore[attr-defined]
    ack = await next_ack(call)
    assert all(v.accepted for v in ack.verdicts)
    job = grid.app.store.get_job(found[attempts[0]].job_id)
    assert job is not None and job.finished_at == clock(grid).now()
    clock(grid).advance(1.5 * DAY)  # uploaded 3.5 days ago, the job ended 1.5 days ago
    assert (await grid.app.sweep()).blobs == 0
    assert all(grid.app.blobs.size(d) == 100 * KiB for d in outputs)
    clock(grid).advance(2 * DAY)
    assert (await grid.app.sweep()).blobs == 2
    call.cancel()  # type: ignore[attr-defined]


async def test_a_job_submitted_during_the_walk_keeps_its_inputs(grid: Served) -> None:
    """The sweep reads what jobs need in steps, serving meanwhile; a job submitted between
    two steps names a blob the walk found unneeded, and the blob must stay."""
    app, alice = grid.app, grid.auth(grid.alice_key)
    data = os.urandom(10 * KiB)
    await upload(grid, alice, data)
    digest = hashlib.sha256(data).hexdigest()
    await leased_node(grid)  # a live job to walk
    clock(grid).advance(4 * DAY)
    swept = Swept()
    steps = app.sweeper.collect_blobs(swept)
    next(steps)  # the walk has begun
    account = app.store.get_account_by_name("alice")
    assert account is not None
    spec = JobSpec(kind="checksum", params=b'{"tasks": 1}', inputs={"data": digest})
    await app.call(lambda: app.jobs.submit(account, spec))
    for _ in steps:
        pass
    assert swept.blobs == 0 and app.blobs.size(digest) == len(data)


@pytest.mark.parametrize("tasks", [1, 3])  # written at once; a slice per group commit
async def test_a_sweep_while_a_submit_is_in_flight_keeps_its_inputs(
    grid: Served, tasks: int
) -> None:
    """A submit checks its inputs, plans its job in a worker thread and writes it in a
    later group commit (a large job over several, hidden until the last): a sweep in
    between found the input named by no job and collected it, and the job was written
    naming a deleted blob."""
    app, alice = grid.app, grid.auth(grid.alice_key)
    app.submitter.step = 2  # a job of 3 tasks is written in slices
    data = os.urandom(10 * KiB)
    await upload(grid, alice, data)
    digest = hashlib.sha256(data).hexdigest()
    clock(grid).advance(4 * DAY)  # unused for longer than the retention
    account = app.store.get_account_by_name("alice")
    assert account is not None
    params = f'{{"tasks": {tasks}}}'.encode()
    spec = JobSpec(kind="checksum", params=params, inputs={"data": digest})
    submit = asyncio.create_task(app.submit(account, spec))
    await asyncio.sleep(0)  # its inputs checked; its plan not begun
    if tasks > app.submitter.step:  # until its job is written, hidden
        while not app.store.list_jobs(account.id, states=[JobState.SUBMITTING], limit=1):
            await asyncio.sleep(0)
    swept = Swept()
    for _ in app.sweeper.collect_blobs(swept):  # a whole sweep, between two steps
        pass
    assert swept.blobs == 0 and app.blobs.size(digest) == len(data)
    job = await submit
    assert job.task_count == tasks and job.inputs == {"data": digest}
    assert (await app.sweep()).blobs == 0  # its job holds it now
    assert app.submitter.held() == set()


async def test_nodes_that_never_worked_are_forgotten(grid: Served) -> None:
    """Every registration left a node row for good: keys by the thousand filled the
    database."""
    app = grid.app
    idle = [await session(grid, Signer.generate()) for _ in range(3)]
    for call, _ in idle[:2]:
        call.cancel()
    _, worker_id, _, worker = await leased_node(grid)  # it holds a task: it did work
    worker.cancel()  # type: ignore[attr-defined]
    await wait_disconnected(app, [n for _, n in idle[:2]] + [worker_id])
    clock(grid).advance(DAY + 1)
    assert (await app.sweep()).nodes == 2
    left = {n.id for n in app.store.list_nodes()}
    assert left == {idle[2][1], worker_id}  # the connected one and the one that worked
    idle[2][0].cancel()


async def wait_disconnected(app: App, node_ids: list[str]) -> None:
    async with asyncio.timeout(5):
        while set(node_ids) & set(app.scheduler.sessions):
            await asyncio.sleep(0.01)


async def test_asking_about_a_blob_again_and_again_writes_once_a_minute(
    grid: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each StatBlob of a blob its caller holds renewed it in a group commit: a loop of
    questions was a loop of writes. A question renews it at most once a minute; the blob
    stays used within a minute of every question, so it is kept as long as before."""
    alice, app = grid.auth(grid.alice_key), grid.app
    data = os.urandom(10 * KiB)
    await upload(grid, alice, data)
    digest = hashlib.sha256(data).hexdigest()
    writes: list[str] = []
    record = app.store.record_blob

    def counted(digest: str, *args: Any) -> None:
        writes.append(digest)
        record(digest, *args)

    monkeypatch.setattr(app.store, "record_blob", counted)
    stub = blob_pb2_grpc.BlobServiceStub(grid.channel)
    request = blob_pb2.StatBlobRequest(digest=digest)
    for _ in range(50):
        assert (await stub.StatBlob(request, metadata=alice)).exists
    assert writes == [digest]
    for _ in range(10):  # five minutes of a question every 30 s
        clock(grid).advance(30)
        assert (await stub.StatBlob(request, metadata=alice)).exists
    assert writes == [digest] * 6
    bob = grid.auth(grid.bob_key)  # bob, who does not hold it, renews nothing
    assert not (await stub.StatBlob(request, metadata=bob)).exists
    assert len(writes) == 6
    clock(grid).advance(3 * DAY - 60)  # the retention less a minute after the last question
    assert (await app.sweep()).blobs == 0 and app.blobs.size(digest) == len(data)
    assert (await stub.StatBlob(request, metadata=alice)).exists  # and it is renewed again
    assert len(writes) == 7
