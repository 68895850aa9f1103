"""Blobs in an S3-compatible bucket (moto's standalone server, real HTTP): uploads cut
and resumed through the real BlobService, nothing visible before its digest checks out,
ranged downloads, two coordinators' stores over one bucket, the read cache's bound, and
clear errors at start for a missing bucket or an endpoint that does not answer."""

import asyncio
import hashlib
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc import aio

from sparegrid.coordinator.app import App
from sparegrid.coordinator.blobs_s3 import BlobStoreError, S3BlobStore, open_blobs
from sparegrid.coordinator.cli import ensure_admin
from sparegrid.coordinator.domain import JobState, escrow_account
from sparegrid.coordinator.errors import CoordinatorError, ErrorKind
from sparegrid.coordinator.rpc.blob import CHUNK
from sparegrid.coordinator.server import build_server
from sparegrid.coordinator.services.jobs import JobSpec
from sparegrid.coordinator.services.results import Failure
from sparegrid.coordinator.settings import Settings
from sparegrid.coordinator.store.sqlite import SqliteStore
from sparegrid.v1 import blob_pb2, blob_pb2_grpc
from tests.conftest import S3Server
from tests.coordinator.conftest import code_of
from tests.coordinator.helpers import FakeNode

DATA = os.urandom(9 << 20 | 333)
DIGEST = hashlib.sha256(DATA).hexdigest()
Metadata = tuple[tuple[str, str]]


class Coordinator:
    """A coordinator on loopback whose blobs are in s3://bucket/pfx."""

    def __init__(self, app: App, channel: aio.Channel, key: str) -> None:
        self.app = app
        self.stub = blob_pb2_grpc.BlobServiceStub(channel)
        self.md: Metadata = (("authorization", f"Bearer {key}"),)


@pytest.fixture
async def bucket(s3: S3Server) -> str:
    return s3.bucket()


@pytest.fixture
async def coordinator(tmp_path: Path, bucket: str) -> AsyncIterator[Coordinator]:
    settings = Settings(data_dir=tmp_path, max_blob_size=16 << 20, blobs=f"s3://{bucket}/pfx")
    app = App(SqliteStore(tmp_path / "coordinator.db"), settings)
    ensure_admin(app, tmp_path)
    _, key = app.accounts.create("alice", 100)
    server, port = await build_server(app, "127.0.0.1:0")
    app.start()
    await server.start()
    channel = aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Coordinator(app, channel, key)
    finally:
        await channel.close()
        await server.stop(grace=None)
        await app.stop()
        await asyncio.sleep(0)


async def _upload(
    c: Coordinator, data: bytes, digest: str, offset: int = 0, stop: int | None = None
) -> blob_pb2.UploadBlobResponse:
    """Sends data[offset:stop] in 1 MB pieces (stop short of the end: a cut upload)."""
    stop = len(data) if stop is None else stop

    async def parts() -> AsyncIterator[blob_pb2.UploadBlobRequest]:
        header = blob_pb2.BlobHeader(digest=digest, size=len(data), offset=offset)
        yield blob_pb2.UploadBlobRequest(header=header)
        for i in range(offset, stop, 1_000_003):
            yield blob_pb2.UploadBlobRequest(chunk=data[i : min(stop, i + 1_000_003)])

    response: blob_pb2.UploadBlobResponse = await c.stub.UploadBlob(parts(), metadata=c.md)
    return response


async def _download(c: Coordinator, digest: str, offset: int = 0) -> bytes:
    request = blob_pb2.DownloadBlobRequest(digest=digest, offset=offset)
    return b"".join([m.chunk async for m in c.stub.DownloadBlob(request, metadata=c.md)])


async def test_a_cut_upload_resumes_and_lands_in_the_bucket_once_verified(
    coordinator: Coordinator, s3: S3Server, bucket: str, tmp_path: Path
) -> None:
    cut = 4_000_012
    with pytest.raises(aio.AioRpcError) as err:
        await _upload(coordinator, DATA, DIGEST, stop=cut)
    assert code_of(err.value) == "UPLOAD_INCOMPLETE"
    assert s3.keys(bucket) == []  # nothing in the bucket before the digest is checked
    request = blob_pb2.StatBlobRequest(digest=DIGEST)
    stat = await coordinator.stub.StatBlob(request, metadata=coordinator.md)
    assert not stat.exists and stat.partial_size == cut

    done = await _upload(coordinator, DATA, DIGEST, offset=cut)
    assert done.received == len(DATA) - cut
    key = f"pfx/sha256/{DIGEST[:2]}/{DIGEST}"
    assert key in s3.keys(bucket, "pfx/sha256/")
    head = s3.client().head_object(Bucket=bucket, Key=key)
    assert head["ContentLength"] == len(DATA)
    assert not (tmp_path / "blobs" / "sha256").exists()  # not kept on local disk
    assert list((tmp_path / "blobs" / "partial").iterdir()) == []
    stat = await coordinator.stub.StatBlob(request, metadata=coordinator.md)
    assert stat.exists and stat.size == len(DATA)
    for offset in (0, 1, CHUNK + 7, len(DATA) - 1, len(DATA)):  # ranged GETs, chunk by chunk
        assert await _download(coordinator, DIGEST, offset) == DATA[offset:]


async def test_an_input_the_bucket_lost_fails_its_job_once_a_node_reports_it(
    coordinator: Coordinator, s3: S3Server, bucket: str
) -> None:
    """A lifecycle rule deletes a running job's input: the coordinator asks the bucket
    (not the size it remembers) when a node reports the input unavailable, and fails the
    job naming the blob."""
    app = coordinator.app
    data = os.urandom(1000)
    digest = hashlib.sha256(data).hexdigest()
    await _upload(coordinator, data, digest)
    carol, _ = app.accounts.create("carol", 10**9)
    app.store.add_blob_owners([digest], carol.id)
    spec = JobSpec(kind="checksum", params=b'{"tasks": 2}', inputs={"data": digest})
    job_id = app.jobs.submit(carol, spec).id
    node = FakeNode(app, "n1", kinds=("checksum",))
    node.connect(credit=2)
    [(attempt, _, _), *_] = node.sink.take()
    s3.client().delete_object(Bucket=bucket, Key=f"pfx/sha256/{digest[:2]}/{digest}")
    assert app.blobs.size(digest) == len(data)  # still remembered
    failure = Failure(attempt.id, "INPUT_UNAVAILABLE", "could not fetch an input", True)
    assert app.intake.failures(node.id, [failure])[0].accepted
    for _ in range(200):  # the bucket is asked off the event loop
        job = app.store.get_job(job_id)
        if job is not None and job.state == JobState.FAILED:
            break
        await asyncio.sleep(0.05)
    assert job is not None and job.state == JobState.FAILED
    assert job.error.startswith(f"INPUT_UNAVAILABLE: input 'data' (blob {digest}) was removed")
    assert f"s3://{bucket}/pfx" in job.error
    assert app.store.balance(escrow_account(job_id)) == 0
    assert app.blobs.size(digest) is None  # forgotten
    report = app.ledger.check()
    assert report.balanced, report.problems


async def test_a_verified_upload_the_bucket_refused_is_kept_and_published_on_resume(
    coordinator: Coordinator, s3: S3Server, bucket: str
) -> None:
    data = DATA[: 2 << 20]
    digest = hashlib.sha256(data).hexdigest()
    s3.client().delete_bucket(Bucket=bucket)  # the bucket goes away under the coordinator
    with pytest.raises(aio.AioRpcError) as err:
        await _upload(coordinator, data, digest)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert code_of(err.value) == "BLOB_STORE_UNAVAILABLE" and bucket in err.value.details()
    request = blob_pb2.StatBlobRequest(digest=digest)
    stat = await coordinator.stub.StatBlob(request, metadata=coordinator.md)
    assert not stat.exists and stat.partial_size == len(data)  # kept, not sent again

    s3.client().create_bucket(Bucket=bucket)
    done = await _upload(coordinator, data, digest, offset=len(data))
    assert done.received == 0
    assert await _download(coordinator, digest) == data
    assert f"pfx/sha256/{digest[:2]}/{digest}" in s3.keys(bucket)


def test_a_failed_delete_is_tried_again_by_the_next_sweep(
    s3: S3Server, bucket: str, tmp_path: Path
) -> None:
    store = _store(tmp_path, bucket, "c")
    digest = _put(store, os.urandom(1000))
    store.discard([digest])
    working, store.client = store.client, _unreachable()  # the network goes away
    with pytest.raises(CoordinatorError):
        store.empty_trash()
    assert store.size(digest) is None  # still out of sight
    store.client = working
    store.empty_trash()
    assert s3.keys(bucket) == []


async def test_a_wrong_digest_is_refused_and_leaves_nothing_visible(
    coordinator: Coordinator, s3: S3Server, bucket: str
) -> None:
    claimed = hashlib.sha256(b"something else").hexdigest()
    data = DATA[: 3 << 20]
    with pytest.raises(aio.AioRpcError) as err:
        await _upload(coordinator, data, claimed)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(err.value) == "DIGEST_MISMATCH"
    assert s3.keys(bucket) == []
    real = hashlib.sha256(data).hexdigest()
    for digest in (claimed, real):
        assert coordinator.app.blobs.size(digest) is None
        stat = await coordinator.stub.StatBlob(
            blob_pb2.StatBlobRequest(digest=digest), metadata=coordinator.md
        )
        assert not stat.exists and stat.partial_size == 0
        with pytest.raises(aio.AioRpcError) as err:
            await _download(coordinator, digest)
        assert code_of(err.value) == "BLOB_NOT_FOUND"


def _store(root: Path, bucket: str, holder: str, cache_size: int = 1 << 30) -> S3BlobStore:
    store = open_blobs(f"s3://{bucket}/shared/", root, 1 << 30, cache_size, holder)
    assert isinstance(store, S3BlobStore)
    return store


def _put(store: S3BlobStore, data: bytes, owner: str = "alice") -> str:
    digest = hashlib.sha256(data).hexdigest()
    upload = store.begin(digest, len(data), 0, owner)
    try:
        upload.write(data)
        upload.finish()
    finally:
        upload.close()
    return digest


def test_two_coordinators_over_one_bucket_see_each_others_blobs(
    s3: S3Server, bucket: str, tmp_path: Path
) -> None:
    a = _store(tmp_path / "a", bucket, "coordinator-a")
    b = _store(tmp_path / "b", bucket, "coordinator-b")
    data = os.urandom(6 << 20 | 5)
    digest = _put(a, data)
    assert b.size(digest) == len(data)
    with b.open(digest) as reader:
        assert reader.read_at(5 << 20, 1 << 20) == data[5 << 20 : 6 << 20]
    assert b.path(digest).read_bytes() == data  # a local copy, from b's read cache
    assert [(d, size) for d, size, _ in b.stored()] == [(digest, len(data))]

    # b is given the same bytes: both hold it; a collecting it leaves it to b
    assert _put(b, data, owner="bob") == digest
    a.discard([digest])
    assert a.size(digest) is None
    a.empty_trash()
    assert b.size(digest) == len(data)
    with b.open(digest) as reader:
        assert reader.read_at(0, 10) == data[:10]
    b.discard([digest])
    assert b.empty_trash() == len(data)  # its cached copy
    assert s3.keys(bucket) == []
    assert a.size(digest) is None and b.size(digest) is None
    assert not b.path(digest).exists()


def test_a_blob_published_while_another_coordinator_deletes_it_is_kept(
    s3: S3Server, bucket: str, tmp_path: Path
) -> None:
    """b publishes the blob between a's look for other marks (none) and a's delete: b finds
    the blob there and uploads nothing, so a must put it back."""
    a = _store(tmp_path / "a", bucket, "coordinator-a")
    b = _store(tmp_path / "b", bucket, "coordinator-b")
    data = os.urandom(3000)
    digest = _put(a, data)
    a.discard([digest])
    look = a._marked
    raced: list[str] = []

    def racing(found: str) -> bool:
        marked = look(found)
        if not raced:  # a has looked and found no other mark: b publishes now
            raced.append(found)
            assert _put(b, data, owner="bob") == digest  # finds it there: uploads nothing
        return marked

    a._marked = racing  # type: ignore[method-assign]
    a.empty_trash()
    assert raced == [digest]
    assert b.size(digest) == len(data)
    assert b.path(digest).read_bytes() == data
    assert s3.keys(bucket, "shared/aside/") == []  # the copy aside is gone
    assert s3.keys(bucket, "shared/holders/") == [f"shared/holders/{digest}/coordinator-b"]


def test_a_blob_set_aside_by_a_failed_delete_is_put_back_by_the_next_try(
    s3: S3Server, bucket: str, tmp_path: Path
) -> None:
    """b publishes between a's look for marks and a's delete (finding the blob, so uploading
    nothing), and the bucket fails a right after its delete: the sweep's next try finds b's
    mark and puts the copy aside back."""
    a = _store(tmp_path / "a", bucket, "coordinator-a")
    b = _store(tmp_path / "b", bucket, "coordinator-b")
    data = os.urandom(2000)
    digest = _put(a, data)
    a.discard([digest])
    look, looks = a._marked, [0]

    def failing(found: str) -> bool:
        looks[0] += 1
        if looks[0] == 2:  # after the delete, before the put-back
            raise CoordinatorError(ErrorKind.UNAVAILABLE, "BLOB_STORE_UNAVAILABLE", "cut")
        marked = look(found)
        if looks[0] == 1:
            assert _put(b, data, owner="bob") == digest
        return marked

    a._marked = failing  # type: ignore[method-assign]
    with pytest.raises(CoordinatorError):
        a.empty_trash()
    assert s3.keys(bucket, "shared/aside/") == [f"shared/aside/{digest}/coordinator-a"]
    assert s3.keys(bucket, "shared/sha256/") == []  # deleted, b's mark notwithstanding
    a.empty_trash()  # tried again: b marks it, so the copy goes back
    assert s3.keys(bucket, "shared/aside/") == []
    assert b.path(digest).read_bytes() == data


def test_names_that_are_not_digests_reach_neither_the_bucket_nor_the_disk(
    s3: S3Server, bucket: str, tmp_path: Path
) -> None:
    store = _store(tmp_path / "blobs", bucket, "c")
    s3.client().put_object(Bucket=bucket, Key="secret", Body=b"not a blob")
    for name in ("../../secret", "../cache/x", "AB" * 32, "/etc/passwd"):
        for look in (store.size, store.open, store.path):
            with pytest.raises(CoordinatorError) as err:
                look(name)
            assert err.value.code == "BAD_DIGEST"
    assert s3.keys(bucket) == ["secret"]
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["blobs", "cache", "partial"]


def test_the_read_cache_keeps_within_its_size(s3: S3Server, bucket: str, tmp_path: Path) -> None:
    store = _store(tmp_path, bucket, "c", cache_size=3 << 20)
    first, second = _put(store, os.urandom(2 << 20)), _put(store, os.urandom(2 << 20))
    assert store.path(first).exists()
    assert store.path(second).exists()
    assert not (tmp_path / "cache" / first).exists()  # the least recently used went out
    assert store.path(first).stat().st_size == 2 << 20  # fetched again when needed
    assert not (tmp_path / "cache" / second).exists()


def test_a_missing_bucket_is_named_at_start(s3: S3Server, tmp_path: Path) -> None:
    with pytest.raises(BlobStoreError) as err:
        _store(tmp_path, "no-such-bucket", "c")
    assert "bucket 'no-such-bucket' does not exist" in str(err.value)
    assert s3.endpoint in str(err.value)


def _closed_port() -> str:
    """An http:// URL of a loopback port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def _unreachable() -> object:
    """An S3 client of an endpoint that refuses connections."""
    import boto3

    return boto3.session.Session().client("s3", endpoint_url=_closed_port())


def test_an_endpoint_that_does_not_answer_is_named_at_start(
    s3: S3Server, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoint = _closed_port()
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    with pytest.raises(BlobStoreError) as err:
        _store(tmp_path, bucket, "c")
    assert endpoint in str(err.value) and "AWS_ENDPOINT_URL" in str(err.value)


def test_a_request_that_fails_later_is_unavailable_not_internal(
    s3: S3Server, bucket: str, tmp_path: Path
) -> None:
    store = _store(tmp_path, bucket, "c")
    s3.client().delete_bucket(Bucket=bucket)
    with pytest.raises(CoordinatorError) as err:
        store.stored()
    assert err.value.code == "BLOB_STORE_UNAVAILABLE" and bucket in str(err.value)


def _serve(tmp_path: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "sparegrid.cli.main", "coordinator", "serve"]
    command += ["--listen", "127.0.0.1:0", "--data-dir", str(tmp_path / "data"), *flags]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, env=os.environ)


def test_serve_refuses_a_missing_bucket_saying_which(s3: S3Server, tmp_path: Path) -> None:
    ran = _serve(tmp_path, "--blobs", "s3://not-there/pfx")
    assert ran.returncode == 1
    assert "bucket 'not-there' does not exist" in ran.stderr
    assert s3.endpoint in ran.stderr


def test_serve_refuses_a_blobs_url_it_does_not_know(tmp_path: Path) -> None:
    ran = _serve(tmp_path, "--blobs", "gs://bucket/pfx")
    assert ran.returncode != 0
    assert "'gs://bucket/pfx' is neither 'local' nor s3://BUCKET[/PREFIX]" in ran.stderr
    assert not (tmp_path / "data").exists()


def test_serve_without_boto3_says_which_extra_to_install(tmp_path: Path) -> None:
    hide = "import sys; sys.modules['boto3'] = None; from sparegrid.cli.main import main; "
    args = ["coordinator", "serve", "--data-dir", str(tmp_path), "--blobs", "s3://b-1"]
    command = [sys.executable, "-c", f"{hide}sys.exit(main({args!r}))"]
    ran = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert ran.returncode == 1
    assert "--blobs s3://... needs boto3: pip install 'sparegrid[s3]'" in ran.stderr
