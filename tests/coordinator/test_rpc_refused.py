"""Over real gRPC, on SQLite and PostgreSQL: a result the coordinator refuses ends its
attempt at once. A worker never sends a second result for an attempt (it logs the verdict
and forgets the task), so an attempt left running kept its task from every other node
while heartbeats renewed its lease: up to the attempt's maximum age, an hour."""

import asyncio

import pytest

from sparegrid.coordinator.domain import AttemptState, JobState, TaskState
from sparegrid.v1 import client_pb2, client_pb2_grpc, common_pb2, worker_pb2
from sparegrid.wire import Signer, sha256_hex
from sparegrid.wire.receipt import MAX_INLINE_OUTPUT, sign_batch
from tests.coordinator.conftest import Served
from tests.coordinator.sessions import Call, next_ack, session, signed_results


async def node(served: Served, owner_key: str, credit: int) -> tuple[Call, Signer]:
    """A node of the account whose key is `owner_key`, granting `credit` assignments."""
    signer = Signer.generate()
    call, _ = await session(served, signer, owner_key)
    grant = worker_pb2.Credit(device_index=0, count=credit)
    await call.write(worker_pb2.WorkerMessage(credit=grant))
    return call, signer


async def submit(served: Served, tasks: int) -> str:
    """An echo job of alice's."""
    client = client_pb2_grpc.ClientServiceStub(served.channel)
    spec = client_pb2.JobSpec(kind="echo", params=f'{{"tasks": {tasks}}}'.encode())
    reply = await client.SubmitJob(
        client_pb2.SubmitJobRequest(spec=spec), metadata=served.auth(served.alice_key)
    )
    return reply.job.job_id


async def assigned(call: Call) -> list[worker_pb2.Assignment]:
    """The next assignments the node is sent (credit messages before them skipped)."""
    async with asyncio.timeout(10):
        while (message := await call.read()).WhichOneof("body") != "assign":
            pass
    return list(message.assign.assignments)


async def gone(served: Served, node_id: str) -> None:
    async with asyncio.timeout(5):
        while node_id in served.app.scheduler.sessions:
            await asyncio.sleep(0.01)


def bad_result(kind: str, signer: Signer, held: worker_pb2.Assignment) -> worker_pb2.WorkerMessage:
    """A result the coordinator refuses: `kind` is the verdict it gets."""
    if kind == "BAD_OUTPUT":  # an output's name past 256 characters
        return signed_results(signer, [held], b"hi", names=["n" * 257])
    if kind == "INLINE_TOO_LARGE":  # an output an honest worker uploads
        return signed_results(signer, [held], b"x" * (MAX_INLINE_OUTPUT + 1))
    assert kind == "BAD_STATEMENT"  # inputs that are not the task's
    statement = common_pb2.ResultStatement(
        job_id=held.job_id,
        task_id=held.task_id,
        attempt_id=held.attempt_id,
        node_id=signer.node_id,
        inputs=[common_pb2.InputRef(name="data", digest="a" * 64)],
    ).SerializeToString()
    batch = worker_pb2.Results(
        batch_id=1, statements=[statement], signature=sign_batch(signer, [statement])
    )
    return worker_pb2.WorkerMessage(results=batch)


@pytest.mark.parametrize(
    ("kind", "struck"), [("BAD_OUTPUT", 0), ("INLINE_TOO_LARGE", 1), ("BAD_STATEMENT", 0)]
)
async def test_a_refused_result_sends_its_task_to_another_node_at_once(
    served: Served, kind: str, struck: int
) -> None:
    app, store = served.app, served.app.store
    _, carol_key = app.accounts.create("carol", 0)
    job_id = await submit(served, 1)
    bad, bad_signer = await node(served, served.bob_key, 1)
    [held] = await assigned(bad)
    good, good_signer = await node(served, carol_key, 1)  # waiting with credit
    await bad.write(bad_result(kind, bad_signer, held))
    [verdict] = (await next_ack(bad)).verdicts
    assert (verdict.accepted, verdict.code, verdict.credit) == (False, kind, 0)
    [attempt] = store.get_attempts([held.attempt_id])
    assert (attempt.state, attempt.error_code) == (AttemptState.FAILED, kind)
    assert held.attempt_id not in app.scheduler.sessions[bad_signer.node_id].leases
    assert app.reputations.get(bad_signer.node_id).strikes == struck
    # the task went on at once (no lease ran out: it would take 5 s here, an hour at most
    # for a node that sends heartbeats), to the node that was waiting for work
    [again] = await assigned(good)
    assert again.task_id == held.task_id and again.attempt_id != held.attempt_id
    # the same result sent again (a worker resends a batch it heard no answer to) earns
    # nothing: its attempt is over
    await bad.write(bad_result(kind, bad_signer, held))
    [verdict] = (await next_ack(bad)).verdicts
    assert (verdict.accepted, verdict.code, verdict.credit) == (False, "STALE", 0)
    bad.cancel()  # with bob's node away, carol's result needs no cross-check
    await gone(served, bad_signer.node_id)
    await good.write(signed_results(good_signer, [again], b"hi"))
    [verdict] = (await next_ack(good)).verdicts
    assert verdict.accepted and verdict.credit == 1, verdict.message
    job = store.get_job(job_id)
    assert job is not None and job.state == JobState.SUCCEEDED
    assert store.balances("node:") == {f"node:{good_signer.node_id}": 1}  # paid once
    assert store.balance("client:alice") == 100 - 1  # the rest of the escrow refunded
    good.cancel()


async def test_a_task_whose_results_are_all_refused_fails_after_its_attempts(
    served: Served,
) -> None:
    """Refusals count as failed attempts: a task no node can return a result for ends
    failed, saying why, rather than going round."""
    app, store = served.app, served.app.store
    job_id = await submit(served, 1)
    for n in range(3):  # the job's attempt limit; a new node each time (2 failures: off)
        call, signer = await node(served, served.bob_key, 1)
        [held] = await assigned(call)
        await call.write(bad_result("BAD_OUTPUT", signer, held))
        [verdict] = (await next_ack(call)).verdicts
        assert verdict.code == "BAD_OUTPUT", n
        call.cancel()
        await gone(served, signer.node_id)
    job = store.get_job(job_id)
    assert job is not None and job.state == JobState.FAILED
    [task] = store.list_tasks(job_id)
    assert task.state == TaskState.FAILED and task.error.startswith("BAD_OUTPUT: ")
    assert store.balances("node:") == {}
    assert store.balance("client:alice") == 100  # nothing paid, the escrow back
    assert app.scheduler.jobs == {}


async def test_a_node_cannot_end_another_nodes_attempt(served: Served) -> None:
    """A refusal ends only an attempt of the node that sent the result: one naming another
    node's attempt (its ids are no secret to a node that ran a check of it) is NOT_LEASED,
    strikes its sender, and leaves the attempt running."""
    app, store = served.app, served.app.store
    await submit(served, 1)
    honest, honest_signer = await node(served, served.bob_key, 1)
    [held] = await assigned(honest)
    rogue_signer = Signer.generate()
    rogue, _ = await session(served, rogue_signer, served.alice_key)
    forged = common_pb2.ResultStatement(
        job_id=held.job_id,
        task_id=held.task_id,
        attempt_id=held.attempt_id,
        node_id=honest_signer.node_id,
    ).SerializeToString()
    digest = sha256_hex(b"")
    batch = worker_pb2.Results(
        batch_id=1,
        statements=[forged],
        signature=sign_batch(rogue_signer, [forged]),
        inline_outputs={digest: b""},
    )
    await rogue.write(worker_pb2.WorkerMessage(results=batch))
    [verdict] = (await next_ack(rogue)).verdicts
    assert (verdict.accepted, verdict.code) == (False, "NOT_LEASED")
    [attempt] = store.get_attempts([held.attempt_id])
    assert attempt.state == AttemptState.RUNNING
    assert app.reputations.get(rogue_signer.node_id).strikes == 1
    for call in (honest, rogue):
        call.cancel()
