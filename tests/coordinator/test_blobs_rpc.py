"""BlobService over a real grpc.aio server with transfers of several chunks: odd sizes,
unaligned resumes and offsets, a header out of place, a download given up half way."""

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator

import grpc
import pytest
from grpc import aio

from sparegrid.coordinator.rpc.blob import CHUNK
from sparegrid.v1 import blob_pb2, blob_pb2_grpc
from tests.coordinator.conftest import Served, code_of

Metadata = tuple[tuple[str, str]]


DATA = os.urandom(9 << 20 | 333)
DIGEST = hashlib.sha256(DATA).hexdigest()


async def _upload(
    stub: blob_pb2_grpc.BlobServiceStub,
    md: Metadata,
    *,
    offset: int = 0,
    stop: int = len(DATA),
    piece: int = 3 << 20 | 7,
    extra_header: bool = False,
) -> blob_pb2.UploadBlobResponse:
    """Uploads DATA[offset:stop] in pieces (stop < len(DATA): a broken upload)."""

    async def parts() -> AsyncIterator[blob_pb2.UploadBlobRequest]:
        header = blob_pb2.BlobHeader(digest=DIGEST, size=len(DATA), offset=offset)
        yield blob_pb2.UploadBlobRequest(header=header)
        for i in range(offset, stop, piece):
            yield blob_pb2.UploadBlobRequest(chunk=DATA[i : min(stop, i + piece)])
            if extra_header:  # then wait for the verdict, sending nothing that could race it
                yield blob_pb2.UploadBlobRequest(header=header)
                await asyncio.Event().wait()

    response: blob_pb2.UploadBlobResponse = await stub.UploadBlob(parts(), metadata=md)
    return response


async def _download(
    stub: blob_pb2_grpc.BlobServiceStub, digest: str, md: Metadata, offset: int = 0
) -> tuple[int, bytes, int]:
    """(size from the first message, the bytes, how many messages)."""
    messages = [
        m
        async for m in stub.DownloadBlob(
            blob_pb2.DownloadBlobRequest(digest=digest, offset=offset), metadata=md
        )
    ]
    return messages[0].size, b"".join(m.chunk for m in messages), len(messages)


async def test_multi_chunk_round_trip_at_odd_offsets(served: Served) -> None:
    stub = blob_pb2_grpc.BlobServiceStub(served.channel)
    alice = served.auth(served.alice_key)
    done = await _upload(stub, alice)
    assert done.received == len(DATA)
    for offset in (0, 1, 4097, CHUNK, 5 << 20 | 1, len(DATA) - 1, len(DATA)):
        size, got, count = await _download(stub, DIGEST, alice, offset)
        assert size == len(DATA) and got == DATA[offset:]
        assert count == max(1, -(-(len(DATA) - offset) // CHUNK))


async def test_resume_from_an_unaligned_break(served: Served) -> None:
    stub = blob_pb2_grpc.BlobServiceStub(served.channel)
    alice = served.auth(served.alice_key)
    cut = 1_000_003
    with pytest.raises(aio.AioRpcError) as err:
        await _upload(stub, alice, stop=cut, piece=300_001)
    assert err.value.code() == grpc.StatusCode.ABORTED
    assert code_of(err.value) == "UPLOAD_INCOMPLETE"
    stat = await stub.StatBlob(blob_pb2.StatBlobRequest(digest=DIGEST), metadata=alice)
    assert not stat.exists and stat.partial_size == cut
    done = await _upload(stub, alice, offset=cut)
    assert done.received == len(DATA) - cut
    assert (await _download(stub, DIGEST, alice))[1] == DATA


async def test_header_in_the_middle_keeps_what_came_before(served: Served) -> None:
    stub = blob_pb2_grpc.BlobServiceStub(served.channel)
    alice = served.auth(served.alice_key)
    with pytest.raises(aio.AioRpcError) as err:
        await _upload(stub, alice, extra_header=True)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(err.value) == "BAD_UPLOAD"
    stat = await stub.StatBlob(blob_pb2.StatBlobRequest(digest=DIGEST), metadata=alice)
    assert stat.partial_size == 3 << 20 | 7


async def test_download_given_up_half_way(served: Served) -> None:
    stub = blob_pb2_grpc.BlobServiceStub(served.channel)
    alice = served.auth(served.alice_key)
    await _upload(stub, alice)
    call = stub.DownloadBlob(blob_pb2.DownloadBlobRequest(digest=DIGEST), metadata=alice)
    first = await call.read()
    assert isinstance(first, blob_pb2.DownloadBlobResponse)
    assert first.chunk == DATA[:CHUNK]
    call.cancel()
    assert (await _download(stub, DIGEST, alice))[1] == DATA
