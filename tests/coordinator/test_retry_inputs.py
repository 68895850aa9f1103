"""Retrying a job long after it ended, over real gRPC on SQLite and PostgreSQL: the sweep
deletes a finished job's inputs --blob-retention after it ended, and a retry queued tasks
naming them anyway, for every worker to fail to download. A retry now checks its inputs
are stored (or is refused, changing nothing) and holds them while it is in flight."""

import asyncio
import hashlib
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from grpc import aio

from sparegrid.coordinator.app import App
from sparegrid.coordinator.clock import FakeClock
from sparegrid.coordinator.domain import JobState, TaskState
from sparegrid.coordinator.services.sweeper import DAY, SweepConfig, Swept
from sparegrid.coordinator.settings import Settings
from sparegrid.coordinator.store.base import Store
from sparegrid.v1 import blob_pb2, blob_pb2_grpc, client_pb2, client_pb2_grpc, common_pb2
from tests.coordinator.conftest import code_of, serving, store_kinds


class Grid:
    """A coordinator on loopback with a fake clock (sweeps run when a test says), and
    alice's calls to it."""

    def __init__(self, app: App, channel: aio.Channel, key: str) -> None:
        self.app = app
        self.clock = app.clock
        assert isinstance(self.clock, FakeClock)
        self.client = client_pb2_grpc.ClientServiceStub(channel)
        self.blob = blob_pb2_grpc.BlobServiceStub(channel)
        self.md = (("authorization", f"Bearer {key}"),)

    async def upload(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        header = blob_pb2.BlobHeader(digest=digest, size=len(data))

        async def parts() -> AsyncIterator[blob_pb2.UploadBlobRequest]:
            yield blob_pb2.UploadBlobRequest(header=header)
            yield blob_pb2.UploadBlobRequest(chunk=data)

        await self.blob.UploadBlob(parts(), metadata=self.md)
        return digest

    async def cancelled_job(self, digest: str, tasks: int) -> str:
        """A checksum job of `tasks` tasks over the input `digest`, cancelled at once."""
        spec = client_pb2.JobSpec(
            kind="checksum", params=f'{{"tasks": {tasks}}}'.encode(), inputs={"data": digest}
        )
        request = client_pb2.SubmitJobRequest(spec=spec)
        job_id: str = (await self.client.SubmitJob(request, metadata=self.md)).job.job_id
        await self.client.CancelJob(client_pb2.CancelJobRequest(job_id=job_id), metadata=self.md)
        return job_id

    async def retry(self, job_id: str) -> client_pb2.RetryJobResponse:
        request = client_pb2.RetryJobRequest(job_id=job_id)
        response: client_pb2.RetryJobResponse = await self.client.RetryJob(
            request, metadata=self.md
        )
        return response


@pytest.fixture(params=store_kinds())
async def grid(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Grid]:
    settings = Settings(
        data_dir=tmp_path,
        sweeps=SweepConfig(interval=1e9),
        reap_interval_seconds=1e9,
        max_attempt_seconds=30 * DAY,
    )

    def make(store: Store) -> App:
        return App(store, settings, clock=FakeClock(time.time()))

    async with serving(request.param, tmp_path, make) as (app, _, channel):
        _, alice_key = app.accounts.create("alice", 1000)
        yield Grid(app, channel, alice_key)


async def test_a_retry_whose_inputs_were_deleted_is_refused_and_changes_nothing(
    grid: Grid,
) -> None:
    app, store = grid.app, grid.app.store
    data = os.urandom(10 * 1024)
    digest = await grid.upload(data)
    job_id = await grid.cancelled_job(digest, tasks=2)
    grid.clock.advance(4 * DAY)  # ended longer than the retention ago: its input is swept
    assert (await app.sweep()).blobs == 1 and app.blobs.size(digest) is None
    before = store.get_job(job_id), store.list_tasks(job_id), store.balances()
    with pytest.raises(aio.AioRpcError) as err:
        await grid.retry(job_id)
    assert code_of(err.value) == "BLOB_NOT_FOUND"
    message = err.value.details() or ""
    assert f"job {job_id} cannot be retried" in message
    assert f"'data' (blob {digest})" in message and "submit the job again" in message
    assert (store.get_job(job_id), store.list_tasks(job_id), store.balances()) == before
    assert job_id not in app.scheduler.jobs
    # the same bytes uploaded again are the same input: the retry runs
    assert await grid.upload(data) == digest
    retried = await grid.retry(job_id)
    assert retried.job.state == common_pb2.JOB_STATE_QUEUED
    job = store.get_job(job_id)
    assert job is not None and job.state == JobState.QUEUED
    assert {t.state for t in store.list_tasks(job_id)} == {TaskState.QUEUED}


@pytest.mark.parametrize("tasks", [1, 3])  # at once; a slice per group commit
async def test_a_sweep_while_a_retry_is_in_flight_keeps_its_inputs(grid: Grid, tasks: int) -> None:
    """A large retry queues its tasks a slice per group commit while its job stays ended:
    a sweep in between found the job's input named by no live job and deleted it, and
    the retry queued tasks naming a deleted blob."""
    app = grid.app
    app.submitter.step = 2  # a job of 3 tasks is retried in slices
    digest = await grid.upload(os.urandom(10 * 1024))
    job_id = await grid.cancelled_job(digest, tasks=tasks)
    grid.clock.advance(4 * DAY)  # unused for longer than the retention, its job ended
    account = app.store.get_account_by_name("alice")
    assert account is not None
    retry = asyncio.create_task(app.submitter.retry(account, job_id))
    await asyncio.sleep(0)  # its inputs checked; its first slice not written yet
    swept = Swept()
    for _ in app.sweeper.collect_blobs(swept):  # a whole sweep, between two steps
        pass
    assert swept.blobs == 0 and app.blobs.size(digest) == 10 * 1024
    job = await retry
    assert job.state == JobState.QUEUED and job.inputs == {"data": digest}
    assert (await app.sweep()).blobs == 0  # its job holds it now
    assert app.submitter.held() == set()
