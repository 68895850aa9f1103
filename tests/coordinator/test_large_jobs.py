"""A large job is submitted and cancelled without freezing the coordinator: other calls are
served while its tasks are written, it is invisible and costs nothing until it is whole,
and its end marks its queued tasks cancelled a slice at a time afterwards."""

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc import aio

from sparegrid.coordinator.app import App
from sparegrid.coordinator.domain import JobState, TaskState, client_account
from sparegrid.coordinator.services.jobs import JobSpec
from sparegrid.coordinator.settings import Settings
from sparegrid.coordinator.store.base import Store
from sparegrid.v1 import client_pb2, client_pb2_grpc, common_pb2
from tests.coordinator.conftest import code_of, open_backend, serving, store_kinds

TASKS = 20_000


@dataclass
class Big:
    app: App
    stub: client_pb2_grpc.ClientServiceStub
    alice: tuple[tuple[str, str]]
    bob: tuple[tuple[str, str]]


def settings(tmp_path: Path) -> Settings:
    # written in slices from 50 tasks on, so a test needs no million tasks to see them
    return Settings(data_dir=tmp_path, bulk_above=50)


@pytest.fixture(params=store_kinds())
async def big(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Big]:

    def make(store: Store) -> App:
        return App(store, settings(tmp_path))

    async with serving(request.param, tmp_path, make) as (app, _, channel):
        _, alice = app.accounts.create("alice", 3 * TASKS)
        _, bob = app.accounts.create("bob", 0)
        yield Big(
            app,
            client_pb2_grpc.ClientServiceStub(channel),
            (("authorization", f"Bearer {alice}"),),
            (("authorization", f"Bearer {bob}"),),
        )


def echo(tasks: int, key: str = "") -> client_pb2.SubmitJobRequest:
    spec = client_pb2.JobSpec(kind="echo", params=json.dumps({"tasks": tasks}).encode())
    return client_pb2.SubmitJobRequest(spec=spec, idempotency_key=key)


def hidden_jobs(app: App) -> list[str]:
    return [j.id for j in app.store.list_jobs(states=[JobState.SUBMITTING])]


async def test_other_calls_are_served_while_a_large_job_is_written(big: Big) -> None:
    submit = asyncio.ensure_future(big.stub.SubmitJob(echo(TASKS), metadata=big.alice))
    served_meanwhile = 0  # another client's calls answered while the job was half-written
    listed_meanwhile: list[str] = []
    while not submit.done():
        reply = await big.stub.GetAccount(client_pb2.GetAccountRequest(), metadata=big.bob)
        assert reply.name == "bob"
        if hidden_jobs(big.app):  # still being written when the answer came
            served_meanwhile += 1
            balance = big.app.store.balance(client_account("alice"))
            assert balance == 3 * TASKS  # nothing is held before the job is whole
        listed = await big.stub.ListJobs(client_pb2.ListJobsRequest(), metadata=big.alice)
        if hidden_jobs(big.app):  # hidden all the time the listing was made
            listed_meanwhile += [j.job_id for j in listed.jobs]
    job = (await submit).job
    assert served_meanwhile >= 1
    assert listed_meanwhile == []  # nobody saw the job before it was whole
    assert job.state == common_pb2.JOB_STATE_QUEUED and job.counts.queued == TASKS
    assert job.cost_held == 3 * TASKS and hidden_jobs(big.app) == []
    assert big.app.store.task_counts(job.job_id)[TaskState.QUEUED] == TASKS


async def test_cancelling_a_large_job_sweeps_its_tasks_afterwards(big: Big) -> None:
    job = (await big.stub.SubmitJob(echo(TASKS), metadata=big.alice)).job
    cancelled = await big.stub.CancelJob(
        client_pb2.CancelJobRequest(job_id=job.job_id), metadata=big.alice
    )
    counts = cancelled.job.counts
    assert cancelled.job.state == common_pb2.JOB_STATE_CANCELLED
    assert (counts.queued, counts.cancelled) == (0, TASKS)
    # the cancel did not write every task in its own commit: they are swept after it
    assert big.app.store.task_counts(job.job_id)[TaskState.QUEUED] > 0
    page = await big.stub.GetJobResults(
        client_pb2.GetJobResultsRequest(job_id=job.job_id, page_size=5), metadata=big.alice
    )
    assert {r.state for r in page.results} == {common_pb2.TASK_STATE_CANCELLED}
    while big.app.scheduler.sweeps:  # a slice per group commit, others served between
        await big.stub.GetAccount(client_pb2.GetAccountRequest(), metadata=big.bob)
    stored = big.app.store.task_counts(job.job_id)
    assert (stored[TaskState.QUEUED], stored[TaskState.CANCELLED]) == (0, TASKS)
    assert big.app.store.balance(client_account("alice")) == 3 * TASKS  # all refunded
    again = await big.stub.GetJob(client_pb2.GetJobRequest(job_id=job.job_id), metadata=big.alice)
    assert again.job.counts.cancelled == TASKS


async def test_a_large_job_that_cannot_be_paid_at_the_end_is_deleted(big: Big) -> None:
    """The credit is spent by another job while the large one is written: it is refused,
    and what it wrote is deleted."""
    submit = asyncio.ensure_future(big.stub.SubmitJob(echo(TASKS), metadata=big.alice))
    while not hidden_jobs(big.app):
        await asyncio.sleep(0)
    small = await big.stub.SubmitJob(echo(10), metadata=big.alice)
    assert small.job.cost_held == 30
    with pytest.raises(aio.AioRpcError) as err:
        await submit
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert code_of(err.value) == "INSUFFICIENT_CREDIT"
    while hidden_jobs(big.app):
        await asyncio.sleep(0.01)
    listed = await big.stub.ListJobs(client_pb2.ListJobsRequest(), metadata=big.alice)
    assert [j.job_id for j in listed.jobs] == [small.job.job_id]
    assert big.app.store.balance(client_account("alice")) == 3 * TASKS - 30


async def test_the_same_submit_while_a_large_one_is_written_gets_the_same_job(big: Big) -> None:
    first = asyncio.ensure_future(big.stub.SubmitJob(echo(TASKS, "k1"), metadata=big.alice))
    while not hidden_jobs(big.app):
        await asyncio.sleep(0)
    with pytest.raises(aio.AioRpcError) as err:
        await big.stub.SubmitJob(echo(TASKS + 1, "k1"), metadata=big.alice)
    assert code_of(err.value) == "IDEMPOTENCY_KEY_REUSED"
    again = await big.stub.SubmitJob(echo(TASKS, "k1"), metadata=big.alice)
    assert again.job.job_id == (await first).job.job_id
    assert again.job.cost_held == 3 * TASKS


async def test_a_submit_cut_short_by_a_stop_is_deleted_at_the_next_start(tmp_path: Path) -> None:
    store = open_backend("sqlite", tmp_path, "")
    app = App(store, settings(tmp_path))
    account, _ = app.accounts.create("alice", 3 * TASKS)
    app.start()
    submit = asyncio.ensure_future(
        app.submit(account, JobSpec("echo", params=json.dumps({"tasks": TASKS}).encode()))
    )
    while not hidden_jobs(app) or app.store.task_counts(hidden_jobs(app)[0])[TaskState.QUEUED] == 0:
        await asyncio.sleep(0.001)
    [job_id] = hidden_jobs(app)
    await app.stop()  # the coordinator stops half-way through writing it
    with pytest.raises(asyncio.CancelledError):
        await submit
    again = App(open_backend("sqlite", tmp_path, ""), settings(tmp_path))
    again.start_services()
    assert again.store.get_job(job_id) is None
    assert again.store.task_counts(job_id)[TaskState.QUEUED] == 0
    assert again.store.balance(client_account("alice")) == 3 * TASKS
    assert again.ledger.check().balanced
    again.store.close()


async def test_a_restart_resumes_the_sweep_of_an_ended_job(tmp_path: Path) -> None:
    store = open_backend("sqlite", tmp_path, "")
    app = App(store, settings(tmp_path))
    account, _ = app.accounts.create("alice", 3 * TASKS)
    app.start_services()  # no sweeper runs: the stop comes before any sweep
    job = app.jobs.submit(account, JobSpec("echo", params=json.dumps({"tasks": 500}).encode()))
    app.jobs.cancel(account, job.id)
    assert app.scheduler.sweeps and store.task_counts(job.id)[TaskState.QUEUED] == 500
    store.close()
    again = App(open_backend("sqlite", tmp_path, ""), settings(tmp_path))
    again.start()
    while again.scheduler.sweeps:
        await asyncio.sleep(0.01)
    assert again.store.task_counts(job.id)[TaskState.CANCELLED] == 500
    await again.stop()


async def test_retrying_a_large_job_queues_its_tasks_in_slices(big: Big) -> None:
    job = (await big.stub.SubmitJob(echo(TASKS), metadata=big.alice)).job
    await big.stub.CancelJob(client_pb2.CancelJobRequest(job_id=job.job_id), metadata=big.alice)
    retry = asyncio.ensure_future(
        big.stub.RetryJob(client_pb2.RetryJobRequest(job_id=job.job_id), metadata=big.alice)
    )
    served_meanwhile = 0
    while not retry.done():
        await big.stub.GetAccount(client_pb2.GetAccountRequest(), metadata=big.bob)
        if job.job_id in big.app.submitter._retrying:  # still queuing its tasks again
            stored = big.app.store.get_job(job.job_id)
            assert stored is not None
            if stored.state == JobState.CANCELLED:  # not yet published: it stays cancelled
                served_meanwhile += 1
            else:  # published, its task not yet told: the whole job, never a part of it
                assert stored.state == JobState.QUEUED
                assert big.app.store.task_counts(job.job_id)[TaskState.QUEUED] == TASKS
    assert served_meanwhile >= 1
    again = (await retry).job
    assert again.state == common_pb2.JOB_STATE_QUEUED and again.counts.queued == TASKS
    assert big.app.store.balance(client_account("alice")) == 0  # held again, in full
    assert big.app.store.task_counts(job.job_id)[TaskState.QUEUED] == TASKS


async def test_a_large_retry_that_cannot_be_paid_sweeps_its_tasks_back(big: Big) -> None:
    job = (await big.stub.SubmitJob(echo(TASKS), metadata=big.alice)).job
    await big.stub.CancelJob(client_pb2.CancelJobRequest(job_id=job.job_id), metadata=big.alice)
    await big.stub.SubmitJob(echo(10), metadata=big.alice)  # 30 of the credit it needs
    with pytest.raises(aio.AioRpcError) as err:
        await big.stub.RetryJob(client_pb2.RetryJobRequest(job_id=job.job_id), metadata=big.alice)
    assert code_of(err.value) == "INSUFFICIENT_CREDIT"
    while big.app.scheduler.sweeps:
        await asyncio.sleep(0.01)
    stored = big.app.store.task_counts(job.job_id)
    assert (stored[TaskState.QUEUED], stored[TaskState.CANCELLED]) == (0, TASKS)
    got = await big.stub.GetJob(client_pb2.GetJobRequest(job_id=job.job_id), metadata=big.alice)
    assert got.job.state == common_pb2.JOB_STATE_CANCELLED
    assert big.app.store.balance(client_account("alice")) == 3 * TASKS - 30


async def test_a_reload_during_a_large_retry_sweeps_none_of_its_tasks(big: Big) -> None:
    """A failed group commit (any caller's) reloads memory from the database; a large retry
    then being written had its job, still ended in the store, marked for the sweep, which
    cancelled the tasks the retry had queued again. The retry went on and queued a job
    whose cancelled tasks counted as open: it never finished."""
    app = big.app
    job = (await big.stub.SubmitJob(echo(TASKS), metadata=big.alice)).job
    await big.stub.CancelJob(client_pb2.CancelJobRequest(job_id=job.job_id), metadata=big.alice)
    while app.scheduler.sweeps:
        await asyncio.sleep(0.01)
    retry = asyncio.ensure_future(
        big.stub.RetryJob(client_pb2.RetryJobRequest(job_id=job.job_id), metadata=big.alice)
    )
    while not app.store.task_counts(job.job_id)[TaskState.QUEUED]:  # a slice queued again
        await asyncio.sleep(0)

    def reload_and_sweep() -> None:  # as after a failed group commit, the sweep running
        app._reload()  # before the retry's next slice
        app.scheduler.sweep(TASKS)

    await app.call(reload_and_sweep)
    again = (await retry).job
    assert again.state == common_pb2.JOB_STATE_QUEUED and again.counts.queued == TASKS
    assert app.store.task_counts(job.job_id)[TaskState.QUEUED] == TASKS
    assert app.scheduler.jobs[job.job_id].open_tasks == TASKS
