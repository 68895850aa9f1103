"""Uploads dedup and resume, downloads resume and check digests: real grpc.aio server."""

import asyncio
import dataclasses
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sparegrid.sdk import (
    AsyncClient,
    Client,
    InvalidArgumentError,
    NotFoundError,
    OutputRef,
    VerificationError,
)
from sparegrid.sdk.retry import RetryPolicy
from sparegrid.sdk.testing import InMemoryBlobService, serve_blobs, signed_results
from sparegrid.wire import sha256_hex

FAST = RetryPolicy(initial_backoff=0.01, max_backoff=0.01)
DATA = os.urandom(300_000)
DIGEST = sha256_hex(DATA)


@pytest.fixture
async def blobs() -> AsyncIterator[tuple[InMemoryBlobService, str]]:
    service = InMemoryBlobService()
    server, address = await serve_blobs(service)
    yield service, address
    await server.stop(None)


@pytest.fixture
async def client(blobs: tuple[InMemoryBlobService, str]) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(blobs[1], "k1", retry=FAST, chunk_size=64 * 1024) as c:
        yield c


async def test_upload_then_dedup(
    blobs: tuple[InMemoryBlobService, str], client: AsyncClient
) -> None:
    service, _ = blobs
    progress: list[tuple[int, int]] = []
    assert await client.upload(DATA, on_progress=lambda d, t: progress.append((d, t))) == DIGEST
    assert service.blobs[DIGEST] == DATA
    assert service.bytes_received == len(DATA)
    assert progress[-1] == (len(DATA), len(DATA))
    assert len(progress) == 1 + -(-len(DATA) // (64 * 1024))
    assert await client.upload(DATA) == DIGEST
    assert service.bytes_received == len(DATA)  # the second upload sent no bytes
    assert service.uploads == 1
    assert service.authorizations[0] == "Bearer k1"


async def test_a_path_that_is_no_file_is_refused_before_anything_is_sent(
    blobs: tuple[InMemoryBlobService, str], client: AsyncClient, tmp_path: Path
) -> None:
    """`client.checksum("nope.bin")` raised a bare FileNotFoundError from deep in the
    upload, where `client.render("nope.blend")` and the CLI give a BAD_INPUT error."""
    for path, why in ((tmp_path / "nope.bin", "does not exist"), (tmp_path, "is a directory")):
        with pytest.raises(InvalidArgumentError) as caught:
            await client.checksum(path, tasks=3)
        assert caught.value.code == "BAD_INPUT"
        assert caught.value.message.startswith(f"cannot upload {path}: it {why}")
    assert blobs[0].uploads == 0


async def test_upload_file_resumes_from_partial(
    blobs: tuple[InMemoryBlobService, str], client: AsyncClient, tmp_path: Path
) -> None:
    service, _ = blobs
    path = tmp_path / "input.bin"
    path.write_bytes(DATA)
    service.partials[DIGEST] = bytearray(DATA[:100_000])
    assert await client.upload(path) == DIGEST
    assert service.bytes_received == len(DATA) - 100_000
    assert service.blobs[DIGEST] == DATA
    assert DIGEST not in service.partials


async def test_download_verifies_and_renames(
    blobs: tuple[InMemoryBlobService, str], client: AsyncClient, tmp_path: Path
) -> None:
    blobs[0].blobs[DIGEST] = DATA
    dest = tmp_path / "out" / "blob.bin"
    assert await client.download(DIGEST, dest) == dest
    assert dest.read_bytes() == DATA
    assert [p.name for p in dest.parent.iterdir()] == ["blob.bin"]


async def test_download_resumes_after_cut(
    blobs: tuple[InMemoryBlobService, str], client: AsyncClient, tmp_path: Path
) -> None:
    service, _ = blobs
    service.blobs[DIGEST] = DATA
    service.cut_download_after = 50_000
    dest = tmp_path / "blob.bin"
    await client.download(DIGEST, dest)
    assert dest.read_bytes() == DATA
    assert service.downloads[0] == 0
    assert service.downloads[1] >= 50_000


async def test_download_digest_mismatch(
    blobs: tuple[InMemoryBlobService, str], client: AsyncClient, tmp_path: Path
) -> None:
    service, _ = blobs
    service.blobs[DIGEST] = DATA
    service.corrupt.add(DIGEST)
    dest = tmp_path / "blob.bin"
    with pytest.raises(VerificationError) as info:
        await client.download(DIGEST, dest)
    assert info.value.code == "DIGEST_MISMATCH"
    assert list(tmp_path.iterdir()) == []


async def test_download_missing_blob(client: AsyncClient, tmp_path: Path) -> None:
    with pytest.raises(NotFoundError) as info:
        await client.download("0" * 64, tmp_path / "x")
    assert info.value.code == "BLOB_NOT_FOUND"


async def test_sync_client_round_trip(
    blobs: tuple[InMemoryBlobService, str], tmp_path: Path
) -> None:
    service, address = blobs

    def work() -> bytes:
        with Client(address, "k2", retry=FAST) as client:
            assert client.upload(DATA) == DIGEST
            assert client.upload(DATA) == DIGEST
            service.cut_download_after = 10_000
            client.download(DIGEST, tmp_path / "copy.bin")
            return (tmp_path / "copy.bin").read_bytes()

    assert await asyncio.to_thread(work) == DATA
    assert service.bytes_received == len(DATA)
    assert service.downloads == [0, 12288]


async def test_task_output_downloaded_when_not_inline(
    blobs: tuple[InMemoryBlobService, str], client: AsyncClient
) -> None:
    service, address = blobs
    service.blobs[DIGEST] = DATA
    result = signed_results("j", [{"big": DATA}])[0]
    ref = OutputRef("big", DIGEST, len(DATA))
    assert result.outputs == [ref]
    fetched = dataclasses.replace(result, inline_outputs={}, afetch=client._fetch)
    assert await fetched.output_async("big") == DATA

    def sync_fetch() -> bytes:
        with Client(address, "k3", retry=FAST) as sync:
            return dataclasses.replace(fetched, fetch=sync._fetch).output("big")

    assert await asyncio.to_thread(sync_fetch) == DATA
