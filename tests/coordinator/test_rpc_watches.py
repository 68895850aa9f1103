"""WatchJob streams: one account may hold MAX_WATCHES open at once (each is a stream and a
read of its job every few seconds), another account's watches are not counted against
it, and a watch that ends gives its place back."""

import asyncio

import grpc
import pytest

from sparegrid.coordinator.rpc.client import MAX_WATCHES
from sparegrid.v1 import client_pb2, client_pb2_grpc
from tests.coordinator.conftest import Served, code_of


async def _job(stub: client_pb2_grpc.ClientServiceStub, key_md) -> str:
    spec = client_pb2.JobSpec(kind="echo", params=b'{"tasks": 1}')
    request = client_pb2.SubmitJobRequest(spec=spec)
    return (await stub.SubmitJob(request, metadata=key_md)).job.job_id


async def _watching(stub: client_pb2_grpc.ClientServiceStub, job_id: str, key_md):
    """A WatchJob call that has sent its first snapshot (so it is counted)."""
    call = stub.WatchJob(client_pb2.WatchJobRequest(job_id=job_id), metadata=key_md)
    await call.read()
    return call


async def test_one_account_holds_a_bounded_number_of_watches(served: Served) -> None:
    stub = client_pb2_grpc.ClientServiceStub(served.channel)
    alice, bob = served.auth(served.alice_key), served.auth(served.bob_key)
    job_id = await _job(stub, alice)
    calls = await asyncio.gather(*(_watching(stub, job_id, alice) for _ in range(MAX_WATCHES)))

    one_more = stub.WatchJob(client_pb2.WatchJobRequest(job_id=job_id), metadata=alice)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await one_more.read()
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert code_of(refused.value) == "TOO_MANY_WATCHES"
    assert f"watching {MAX_WATCHES} jobs already" in (refused.value.details() or "")

    bobs = await _watching(stub, await _job(stub, bob), bob)  # bob is not held back
    bobs.cancel()

    calls[0].cancel()  # a watch that ends gives its place back
    for _ in range(100):
        again = stub.WatchJob(client_pb2.WatchJobRequest(job_id=job_id), metadata=alice)
        try:
            first = await again.read()
            break
        except grpc.aio.AioRpcError:
            await asyncio.sleep(0.02)
    assert first.job.job_id == job_id
    again.cancel()
    for call in calls[1:]:
        call.cancel()
