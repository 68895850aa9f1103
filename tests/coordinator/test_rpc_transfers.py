"""Blob transfers held open, over real gRPC: one account may hold MAX_TRANSFERS uploads
and downloads open at once, and one worker node as many uploads. Each open upload holds a
file, two threads and a staging buffer on the coordinator for as long as its caller keeps
it, and an upload announcing a few bytes reserves only those of the quota: without the
bound, one API key could hold them by the hundred thousand, until the coordinator had no
file descriptor left to accept a connection with."""

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import grpc
import pytest
from grpc import aio

from sparegrid.coordinator.rpc.blob import MAX_TRANSFERS
from sparegrid.sdk.aio import AsyncClient
from sparegrid.v1 import blob_pb2, blob_pb2_grpc, client_pb2, client_pb2_grpc, worker_pb2
from sparegrid.wire import Signer
from sparegrid.worker.testing.harness import wait_until
from tests.coordinator.conftest import Served, code_of
from tests.coordinator.sessions import session

SIZE = 16  # what each upload held open announces, and so reserves of the quota
Metadata = tuple[tuple[str, str], ...]
T = TypeVar("T")
Upload = aio.StreamUnaryCall[blob_pb2.UploadBlobRequest, blob_pb2.UploadBlobResponse]


def _held_upload(stub: blob_pb2_grpc.BlobServiceStub, md: Metadata, *attempt_ids: str) -> Upload:
    """An upload that sends its header and one byte, then nothing more until cancelled."""
    data = os.urandom(SIZE)
    header = blob_pb2.BlobHeader(
        digest=hashlib.sha256(data).hexdigest(), size=SIZE, attempt_ids=attempt_ids
    )

    async def parts() -> AsyncIterator[blob_pb2.UploadBlobRequest]:
        yield blob_pb2.UploadBlobRequest(header=header)
        yield blob_pb2.UploadBlobRequest(chunk=data[:1])
        await asyncio.Event().wait()

    return stub.UploadBlob(parts(), metadata=md)


async def _upload(
    stub: blob_pb2_grpc.BlobServiceStub, md: Metadata, data: bytes, *attempt_ids: str
) -> blob_pb2.UploadBlobResponse:
    header = blob_pb2.BlobHeader(
        digest=hashlib.sha256(data).hexdigest(), size=len(data), attempt_ids=attempt_ids
    )

    async def parts() -> AsyncIterator[blob_pb2.UploadBlobRequest]:
        yield blob_pb2.UploadBlobRequest(header=header)
        yield blob_pb2.UploadBlobRequest(chunk=data)

    response: blob_pb2.UploadBlobResponse = await stub.UploadBlob(parts(), metadata=md)
    return response


async def _download(stub: blob_pb2_grpc.BlobServiceStub, md: Metadata, digest: str) -> bytes:
    request = blob_pb2.DownloadBlobRequest(digest=digest)
    return b"".join([m.chunk async for m in stub.DownloadBlob(request, metadata=md)])


async def _refused(coro: object) -> aio.AioRpcError:
    with pytest.raises(aio.AioRpcError) as err:
        await coro  # type: ignore[misc]
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.value
    assert code_of(err.value) == "TOO_MANY_TRANSFERS"
    return err.value


async def _retried(transfer: Callable[[], Awaitable[T]]) -> T:
    """The transfer, once the coordinator has seen the cancelled ones end."""
    for _ in range(500):
        try:
            return await transfer()
        except aio.AioRpcError as exc:
            if code_of(exc) != "TOO_MANY_TRANSFERS":
                raise
            await asyncio.sleep(0.01)
    raise AssertionError("still refused after the transfers held open ended")


async def test_one_account_holds_a_bounded_number_of_transfers_open(served: Served) -> None:
    stub = blob_pb2_grpc.BlobServiceStub(served.channel)
    alice, bob = served.auth(served.alice_key), served.auth(served.bob_key)
    kept = os.urandom(1000)
    await _upload(stub, alice, kept)  # a blob alice may download later
    held = [_held_upload(stub, alice) for _ in range(MAX_TRANSFERS)]
    # each has reserved its size once the coordinator took it up, and counted it before
    await wait_until(lambda: served.app.store.usage("alice").in_flight == MAX_TRANSFERS * SIZE)

    error = await _refused(_upload(stub, alice, os.urandom(100)))
    assert f"account 'alice' has {MAX_TRANSFERS} uploads and downloads open" in (
        error.details() or ""
    )
    await _refused(_download(stub, alice, hashlib.sha256(kept).hexdigest()))
    assert served.app.store.usage("alice").in_flight == MAX_TRANSFERS * SIZE  # nothing more

    data = os.urandom(100)  # bob is not held back by alice's
    assert (await _upload(stub, bob, data)).received == 100
    assert await _download(stub, bob, hashlib.sha256(data).hexdigest()) == data

    held[0].cancel()  # an upload that ends gives its place back
    data = os.urandom(100)
    assert (await _retried(lambda: _upload(stub, alice, data))).received == 100
    for call in held[1:]:
        call.cancel()
    digest = hashlib.sha256(kept).hexdigest()
    assert await _retried(lambda: _download(stub, alice, digest)) == kept


async def test_the_sdk_waits_for_a_place_when_its_account_holds_every_one(
    served: Served, tmp_path: Path
) -> None:
    """A program running more transfers at once than an account may hold, under one key:
    the SDK tries again (TOO_MANY_TRANSFERS is transient) and the one over goes through
    once another ends, rather than fail the user's job."""
    stub = blob_pb2_grpc.BlobServiceStub(served.channel)
    held = [_held_upload(stub, served.auth(served.alice_key)) for _ in range(MAX_TRANSFERS)]
    await wait_until(lambda: served.app.store.usage("alice").in_flight == MAX_TRANSFERS * SIZE)
    path = tmp_path / "input.bin"
    path.write_bytes(os.urandom(1000))
    async with AsyncClient(served.address, served.alice_key) as client:
        upload = asyncio.ensure_future(client.upload(path))
        await asyncio.sleep(0.3)  # refused, and trying again
        assert not upload.done()
        held[0].cancel()
        assert await asyncio.wait_for(upload, 30) == hashlib.sha256(path.read_bytes()).hexdigest()
    for call in held[1:]:
        call.cancel()


async def test_a_worker_node_holds_a_bounded_number_of_uploads_open(served: Served) -> None:
    """Any fresh node key holding one leased attempt could name it in uploads without end."""
    client = client_pb2_grpc.ClientServiceStub(served.channel)
    spec = client_pb2.JobSpec(kind="echo", params=b'{"tasks": 1}')
    await client.SubmitJob(
        client_pb2.SubmitJobRequest(spec=spec), metadata=served.auth(served.bob_key)
    )
    call, node_id = await session(served, Signer.generate())
    await call.write(worker_pb2.WorkerMessage(credit=worker_pb2.Credit(device_index=0, count=1)))
    attempt = (await call.read()).assign.assignments[0].attempt_id
    token = next(t for t, n in served.app.session_tokens.items() if n == node_id)
    md = (("authorization", f"Session {token}"),)
    stub = blob_pb2_grpc.BlobServiceStub(served.channel)

    held = [_held_upload(stub, md, attempt) for _ in range(MAX_TRANSFERS)]
    pool = served.app.store.anonymous_usage
    await wait_until(lambda: pool().in_flight == MAX_TRANSFERS * SIZE)
    error = await _refused(_upload(stub, md, os.urandom(100), attempt))
    assert f"node {node_id} has {MAX_TRANSFERS} uploads open" in (error.details() or "")

    # the node's uploads are its own: alice's account is not held back by them
    alice = served.auth(served.alice_key)
    assert (await _upload(stub, alice, os.urandom(100))).received == 100

    for held_call in held:
        held_call.cancel()
    data = os.urandom(100)
    assert (await _retried(lambda: _upload(stub, md, data, attempt))).received == 100
    call.cancel()
