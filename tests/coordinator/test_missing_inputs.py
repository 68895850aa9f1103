"""A coordinator that starts serving without a job's inputs (a standby that took over from
one keeping blobs in its own data directory, a data directory restored without its
blobs), over real gRPC on SQLite and PostgreSQL: every attempt failed INPUT_UNAVAILABLE
and the job stalled until the wait limit, said only in the log. Now such a job fails at
once, naming the missing blob; its client pays for the task that ran and nothing else,
its held credit comes back, and the ledger balances."""

import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from grpc import aio

from sparegrid.coordinator.app import App
from sparegrid.coordinator.cli import fail_missing_inputs
from sparegrid.coordinator.domain import JobState, TaskState, escrow_account
from sparegrid.coordinator.services.canaries import CanaryConfig
from sparegrid.coordinator.settings import Settings
from sparegrid.v1 import blob_pb2, blob_pb2_grpc, client_pb2, client_pb2_grpc, common_pb2
from tests.coordinator.conftest import _stores, serving
from tests.coordinator.helpers import NO_CHECKS, FakeNode


@pytest.fixture(params=_stores())
async def grid(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[App, aio.Channel]]:
    settings = Settings(data_dir=tmp_path, trust=NO_CHECKS, canaries=CanaryConfig(rate=0.0))
    async with serving(request.param, tmp_path, lambda s: App(s, settings)) as (app, _, ch):
        yield app, ch


async def test_a_job_whose_input_is_missing_fails_at_once_and_costs_only_what_ran(
    grid: tuple[App, aio.Channel],
) -> None:
    app, channel = grid
    alice, key = app.accounts.create("alice", 1000)
    md = (("authorization", f"Bearer {key}"),)
    data = os.urandom(64 * 1024)
    digest = hashlib.sha256(data).hexdigest()

    async def parts() -> AsyncIterator[blob_pb2.UploadBlobRequest]:
        yield blob_pb2.UploadBlobRequest(header=blob_pb2.BlobHeader(digest=digest, size=len(data)))
        yield blob_pb2.UploadBlobRequest(chunk=data)

    await blob_pb2_grpc.BlobServiceStub(channel).UploadBlob(parts(), metadata=md)
    client = client_pb2_grpc.ClientServiceStub(channel)
    spec = client_pb2.JobSpec(kind="checksum", params=b'{"tasks": 4}', inputs={"data": digest})
    job_id = (
        await client.SubmitJob(client_pb2.SubmitJobRequest(spec=spec), metadata=md)
    ).job.job_id
    untouched = await submit_without_inputs(client, md)  # a job that lacks nothing
    node = FakeNode(app, "n1", kinds=("checksum",))  # runs one task of alice's job
    node.connect(credit=1)
    [item] = node.sink.take()
    assert node.answer([item])[0].accepted
    held = app.store.balance(escrow_account(job_id))
    assert held > 0
    spent = app.store.get_job(job_id).cost_spent  # type: ignore[union-attr]
    assert spent > 0 and app.accounts.balance(alice) == 1000 - spent - held - untouched[1]

    app.blobs.path(digest).unlink()  # the blob this coordinator does not have
    assert fail_missing_inputs(app) == 1

    answer = await client.GetJob(client_pb2.GetJobRequest(job_id=job_id), metadata=md)
    assert answer.job.state == common_pb2.JOB_STATE_FAILED
    assert answer.job.error.startswith(f"INPUT_UNAVAILABLE: input 'data' (blob {digest}) ")
    assert "submit the job again" in answer.job.error
    tasks = app.store.list_tasks(job_id)
    assert sorted(t.state for t in tasks) == sorted(
        [TaskState.SUCCEEDED] + [TaskState.CANCELLED] * 3
    )
    assert app.store.balance(escrow_account(job_id)) == 0  # the held credit came back
    assert app.accounts.balance(alice) == 1000 - spent - untouched[1]
    assert job_id not in app.scheduler.jobs
    other = app.store.get_job(untouched[0])
    assert other is not None and other.state == JobState.QUEUED  # its inputs are here
    report = app.ledger.check()
    assert report.balanced, report.problems
    assert fail_missing_inputs(app) == 0  # once


async def submit_without_inputs(
    client: client_pb2_grpc.ClientServiceStub, md: tuple[tuple[str, str]]
) -> tuple[str, int]:
    """An echo job (no inputs): its id and the credit it holds."""
    spec = client_pb2.JobSpec(kind="echo", params=b'{"tasks": 1, "data": "hi"}')
    job = (await client.SubmitJob(client_pb2.SubmitJobRequest(spec=spec), metadata=md)).job
    return job.job_id, job.cost_held
