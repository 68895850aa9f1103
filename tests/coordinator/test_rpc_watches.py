"""Long streams, WatchJob and a follow of WatchEvents: one account may hold MAX_WATCHES
job watches open at once (each is a stream and a read of its job every few seconds),
another account's are not counted against it, and a watch that ends gives its place
back; a key revoked or rotated, or an account disabled, ends the streams it had open."""

import asyncio

import grpc
import pytest

from sparegrid.coordinator.rpc.client import MAX_WATCHES
from sparegrid.v1 import admin_pb2, admin_pb2_grpc, client_pb2, client_pb2_grpc
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


async def _ended(call) -> grpc.aio.AioRpcError:
    """The error a stream ends with, reading past what it sends until then."""
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        async with asyncio.timeout(10):
            while True:
                if await call.read() is grpc.aio.EOF:
                    raise AssertionError("the stream ended without an error")
    return ended.value


async def test_revoking_an_admins_key_ends_its_follow_of_events(served: Served) -> None:
    admin = admin_pb2_grpc.AdminServiceStub(served.channel)
    root = served.auth(served.admin_key)
    made = await admin.CreateAccount(
        admin_pb2.CreateAccountRequest(name="ops", is_admin=True), metadata=root
    )
    follow = admin.WatchEvents(
        admin_pb2.WatchEventsRequest(follow=True), metadata=served.auth(made.api_key)
    )
    await follow.read()  # the events so far
    await admin.RevokeKey(admin_pb2.RevokeKeyRequest(name="ops"), metadata=root)
    stub = client_pb2_grpc.ClientServiceStub(served.channel)
    await _job(stub, served.auth(served.alice_key))  # an event it must not see
    error = await _ended(follow)
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert code_of(error) == "BAD_API_KEY"
    assert "rotated or revoked" in (error.details() or "")


async def test_disabling_an_account_ends_its_job_watches(served: Served) -> None:
    stub = client_pb2_grpc.ClientServiceStub(served.channel)
    alice = served.auth(served.alice_key)
    watch = await _watching(stub, await _job(stub, alice), alice)
    admin = admin_pb2_grpc.AdminServiceStub(served.channel)
    request = admin_pb2.SetAccountDisabledRequest(name="alice", disabled=True)
    await admin.SetAccountDisabled(request, metadata=served.auth(served.admin_key))
    error = await _ended(watch)
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert code_of(error) == "ACCOUNT_DISABLED"
