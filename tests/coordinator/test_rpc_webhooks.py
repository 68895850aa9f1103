"""A webhook receiver cannot hold the coordinator: one that accepts the call and then
trickles its answer a byte at a time (each read within http.client's timeout) is cut off
at the call's deadline, and the calls run on threads of their own, so uploads and
estimates, which wait for the default executor's threads, go on meanwhile."""

import asyncio
import hashlib
import os
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from sparegrid.coordinator.domain import Delivery
from sparegrid.coordinator.services.webhooks import WebhookConfig, post
from sparegrid.v1 import blob_pb2, blob_pb2_grpc, client_pb2, client_pb2_grpc
from tests.coordinator.conftest import Served


@pytest.fixture
def trickler() -> Iterator[tuple[int, list[socket.socket]]]:
    """A receiver that answers a status line, then one header byte every 0.2 s, forever."""
    server = socket.create_server(("127.0.0.1", 0), backlog=128)
    calls: list[socket.socket] = []
    stop = threading.Event()

    def trickle(conn: socket.socket) -> None:
        try:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\n")
            while not stop.wait(0.2):
                conn.sendall(b"X")
        except OSError:
            pass
        finally:
            conn.close()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                return
            calls.append(conn)
            threading.Thread(target=trickle, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    yield server.getsockname()[1], calls
    stop.set()
    server.close()


def test_a_trickled_answer_is_cut_off_at_the_deadline(trickler) -> None:
    port, calls = trickler
    delivery = Delivery("d1", "job1", "acct", f"http://127.0.0.1:{port}/hook", b"{}")
    started = time.monotonic()
    error = post(delivery, b"s" * 32, WebhookConfig(allow_private=True, timeout=0.5))
    assert time.monotonic() - started < 3.0
    assert error == "no whole answer within 0.5 s"  # not "" for the 200 it began with
    assert len(calls) == 1


async def test_receivers_that_never_finish_answering_hold_no_upload(
    served: Served, trickler
) -> None:
    port, calls = trickler
    served.app.settings.webhooks.allow_private = True  # the receiver is on loopback
    served.app.settings.webhooks.timeout = 1.0
    stub = client_pb2_grpc.ClientServiceStub(served.channel)
    alice = served.auth(served.alice_key)
    # more calls than the default executor has threads (asyncio's default size)
    count = min(32, (os.cpu_count() or 1) + 4) + 1
    for i in range(count):
        spec = client_pb2.JobSpec(
            kind="echo",
            params=b'{"tasks": 1, "sleep_ms": 60000}',
            webhook_url=f"http://127.0.0.1:{port}/hook/{i}",
        )
        job = (await stub.SubmitJob(client_pb2.SubmitJobRequest(spec=spec), metadata=alice)).job
        await stub.CancelJob(client_pb2.CancelJobRequest(job_id=job.job_id), metadata=alice)
    for _ in range(100):
        if len(calls) >= min(count, 16):
            break
        await asyncio.sleep(0.05)
    assert len(calls) >= min(count, 16)  # the calls are being trickled

    data = b"bob's input"
    digest = hashlib.sha256(data).hexdigest()

    async def parts():
        yield blob_pb2.UploadBlobRequest(header=blob_pb2.BlobHeader(digest=digest, size=len(data)))
        yield blob_pb2.UploadBlobRequest(chunk=data)

    blobs = blob_pb2_grpc.BlobServiceStub(served.channel)
    done = await blobs.UploadBlob(parts(), metadata=served.auth(served.bob_key), timeout=5)
    assert done.digest == digest

    jobs = served.app.store.list_jobs(served.app.accounts.get("alice").id)
    for _ in range(200):  # every call ends, cut off, and is owed again later
        owed = [d for job in jobs for d in served.app.store.get_webhooks(job.id)]
        if all(d.attempts >= 1 for d in owed):
            break
        await asyncio.sleep(0.05)
    assert len(owed) == count
    assert {d.last_error for d in owed} == {"no whole answer within 1 s"}
    assert {d.state for d in owed} == {"pending"}
