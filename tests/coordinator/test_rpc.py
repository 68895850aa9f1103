"""The coordinator's RPCs on a real grpc.aio server on loopback, with bad input."""

import hashlib
import os

import grpc
import pytest
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sparegrid.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    blob_pb2,
    blob_pb2_grpc,
    client_pb2,
    client_pb2_grpc,
    worker_pb2,
    worker_pb2_grpc,
)
from sparegrid.wire import REGISTER_TAG, Signer
from tests.coordinator.conftest import Served, code_of
from tests.coordinator.sessions import next_ack, signed_results


def echo_spec(tasks: int, kind: str = "echo") -> client_pb2.SubmitJobRequest:
    return client_pb2.SubmitJobRequest(
        spec=client_pb2.JobSpec(kind=kind, params=f'{{"tasks": {tasks}}}'.encode())
    )


async def test_wrong_or_missing_api_key_is_unauthenticated(served: Served) -> None:
    stub = client_pb2_grpc.ClientServiceStub(served.channel)
    with pytest.raises(aio.AioRpcError) as err:
        await stub.GetAccount(client_pb2.GetAccountRequest(), metadata=served.auth("sg_nope"))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert code_of(err.value) == "BAD_API_KEY"
    with pytest.raises(aio.AioRpcError) as err:
        await stub.GetAccount(client_pb2.GetAccountRequest())
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "SPAREGRID_API_KEY" in (err.value.details() or "")


async def test_admin_rpcs_need_an_admin(served: Served) -> None:
    stub = admin_pb2_grpc.AdminServiceStub(served.channel)
    with pytest.raises(aio.AioRpcError) as err:
        await stub.ListNodes(admin_pb2.ListNodesRequest(), metadata=served.auth(served.alice_key))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    reply = await stub.CreateAccount(
        admin_pb2.CreateAccountRequest(name="carol", initial_credit=7),
        metadata=served.auth(served.admin_key),
    )
    assert reply.api_key.startswith("sg_") and reply.account.balance == 7
    with pytest.raises(aio.AioRpcError) as err:
        await stub.CreateAccount(
            admin_pb2.CreateAccountRequest(name="carol"), metadata=served.auth(served.admin_key)
        )
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    check = await stub.CheckLedger(
        admin_pb2.CheckLedgerRequest(), metadata=served.auth(served.admin_key)
    )
    assert check.balanced and check.total == 0


async def test_submit_errors_say_what_is_wrong(served: Served) -> None:
    stub = client_pb2_grpc.ClientServiceStub(served.channel)
    alice = served.auth(served.alice_key)
    with pytest.raises(aio.AioRpcError) as err:
        await stub.SubmitJob(echo_spec(1, kind="nope"), metadata=alice)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "checksum" in (err.value.details() or "") and code_of(err.value) == "UNKNOWN_KIND"
    with pytest.raises(aio.AioRpcError) as err:
        await stub.SubmitJob(echo_spec(500), metadata=alice)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "500" in (err.value.details() or "") and "holds 100" in (err.value.details() or "")
    jobs = await stub.ListJobs(client_pb2.ListJobsRequest(), metadata=alice)
    assert list(jobs.jobs) == []


async def test_another_clients_job_is_not_found(served: Served) -> None:
    stub = client_pb2_grpc.ClientServiceStub(served.channel)
    job = (await stub.SubmitJob(echo_spec(2), metadata=served.auth(served.alice_key))).job
    for call in (
        stub.GetJob(
            client_pb2.GetJobRequest(job_id=job.job_id), metadata=served.auth(served.bob_key)
        ),
        stub.CancelJob(
            client_pb2.CancelJobRequest(job_id=job.job_id), metadata=served.auth(served.bob_key)
        ),
    ):
        with pytest.raises(aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    mine = await stub.GetJob(
        client_pb2.GetJobRequest(job_id=job.job_id), metadata=served.auth(served.alice_key)
    )
    assert mine.job.counts.total == 2 and mine.job.owner == "alice"


async def _upload(
    stub, data: bytes, key_md, offset: int = 0, digest: str | None = None, size: int | None = None
):
    digest = digest or hashlib.sha256(data).hexdigest()

    async def parts():
        yield blob_pb2.UploadBlobRequest(
            header=blob_pb2.BlobHeader(
                digest=digest, size=len(data) if size is None else size, offset=offset
            )
        )
        for i in range(offset, len(data), 1 << 20):
            yield blob_pb2.UploadBlobRequest(chunk=data[i : i + (1 << 20)])

    return await stub.UploadBlob(parts(), metadata=key_md)


async def test_blob_upload_dedup_resume_and_privacy(served: Served) -> None:
    stub = blob_pb2_grpc.BlobServiceStub(served.channel)
    alice, bob = served.auth(served.alice_key), served.auth(served.bob_key)
    data = os.urandom(3 << 20)
    digest = hashlib.sha256(data).hexdigest()
    first = await _upload(stub, data, alice)
    assert first.received == len(data)
    again = await _upload(stub, data, alice)
    assert again.received == 0  # deduplicated: nothing transferred
    # bob cannot see or read alice's blob without having the bytes himself
    stat = await stub.StatBlob(blob_pb2.StatBlobRequest(digest=digest), metadata=bob)
    assert not stat.exists
    with pytest.raises(aio.AioRpcError) as err:
        async for _ in stub.DownloadBlob(blob_pb2.DownloadBlobRequest(digest=digest), metadata=bob):
            pass
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    got = b"".join(
        [
            m.chunk
            async for m in stub.DownloadBlob(
                blob_pb2.DownloadBlobRequest(digest=digest, offset=5), metadata=alice
            )
        ]
    )
    assert got == data[5:]
    # resume: a broken upload keeps its bytes, the next call continues from there
    other = os.urandom(2 << 20)
    odigest = hashlib.sha256(other).hexdigest()
    with pytest.raises(aio.AioRpcError) as err:
        await _upload(stub, other[: 1 << 20], alice, digest=odigest, size=len(other))
    assert err.value.code() == grpc.StatusCode.ABORTED
    stat = await stub.StatBlob(blob_pb2.StatBlobRequest(digest=odigest), metadata=alice)
    assert stat.partial_size == 1 << 20
    done = await _upload(stub, other, alice, offset=1 << 20)
    assert done.received == 1 << 20


async def test_blob_bad_input(served: Served) -> None:
    stub = blob_pb2_grpc.BlobServiceStub(served.channel)
    alice = served.auth(served.alice_key)
    with pytest.raises(aio.AioRpcError) as err:
        await _upload(stub, b"hello", alice, digest="0" * 64)
    assert (
        err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        and code_of(err.value) == "DIGEST_MISMATCH"
    )
    with pytest.raises(aio.AioRpcError) as err:
        await _upload(stub, b"x", alice, digest="zz")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(aio.AioRpcError) as err:
        await _upload(stub, b"x", alice, digest="1" * 64, size=11 << 20)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert str(10 << 20) in (err.value.details() or "")


async def test_oversized_message_is_resource_exhausted(served: Served) -> None:
    stub = client_pb2_grpc.ClientServiceStub(served.channel)
    request = client_pb2.SubmitJobRequest(
        spec=client_pb2.JobSpec(kind="echo", params=b" " * (65 << 20))
    )
    with pytest.raises(aio.AioRpcError) as err:
        await stub.SubmitJob(request, metadata=served.auth(served.alice_key))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_worker_with_a_bad_challenge_signature_is_refused(served: Served) -> None:
    stub = worker_pb2_grpc.WorkerServiceStub(served.channel)
    signer, impostor = Signer.generate(), Signer.generate()
    call = stub.Session()
    await call.write(
        worker_pb2.WorkerMessage(
            hello=worker_pb2.Hello(
                public_key=signer.public_key, devices=[{"index": 0, "kind": 1, "name": "cpu"}]
            )
        )
    )
    challenge = (await call.read()).challenge
    signature = impostor.sign(REGISTER_TAG, challenge.nonce + challenge.session_id.encode())
    await call.write(
        worker_pb2.WorkerMessage(
            challenge_response=worker_pb2.ChallengeResponse(signature=signature)
        )
    )
    with pytest.raises(aio.AioRpcError) as err:
        await call.read()
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert served.app.store.get_node(signer.node_id) is None


async def test_worker_session_end_to_end_over_grpc(served: Served) -> None:
    from sparegrid.v1 import common_pb2
    from sparegrid.wire import sha256_hex

    client = client_pb2_grpc.ClientServiceStub(served.channel)
    job = (await client.SubmitJob(echo_spec(3), metadata=served.auth(served.alice_key))).job
    assert job.waiting == "no worker is connected"
    stub = worker_pb2_grpc.WorkerServiceStub(served.channel)
    signer = Signer.generate()
    call = stub.Session(metadata=served.auth(served.bob_key))  # owned by bob: a vetted node
    await call.write(
        worker_pb2.WorkerMessage(
            hello=worker_pb2.Hello(
                public_key=signer.public_key,
                node_name="raw",
                devices=[common_pb2.Device(index=0, kind=common_pb2.DEVICE_KIND_CPU, name="cpu")],
                executors=[worker_pb2.ExecutorInfo(name="echo", version="1")],
            )
        )
    )
    challenge = (await call.read()).challenge
    await call.write(
        worker_pb2.WorkerMessage(
            challenge_response=worker_pb2.ChallengeResponse(
                signature=signer.sign(REGISTER_TAG, challenge.nonce + challenge.session_id.encode())
            )
        )
    )
    welcome = (await call.read()).welcome
    assert welcome.node_id == signer.node_id
    await call.write(worker_pb2.WorkerMessage(credit=worker_pb2.Credit(device_index=0, count=5)))
    assign = (await call.read()).assign
    assert len(assign.assignments) == 3
    out = b"hi"
    await call.write(signed_results(signer, list(assign.assignments), out))
    ack = await next_ack(call)
    assert ack.batch_id == 1 and all(v.accepted for v in ack.verdicts)
    done = await client.GetJob(
        client_pb2.GetJobRequest(job_id=job.job_id), metadata=served.auth(served.alice_key)
    )
    assert done.job.counts.succeeded == 3 and done.job.cost_spent == 3
    assert done.job.waiting == ""
    results = await client.GetJobResults(
        client_pb2.GetJobResultsRequest(job_id=job.job_id), metadata=served.auth(served.alice_key)
    )
    assert all(r.inline_outputs[sha256_hex(out)] == out for r in results.results)
    call.cancel()


async def test_health_is_served(served: Served) -> None:
    stub = health_pb2_grpc.HealthStub(served.channel)
    reply = await stub.Check(health_pb2.HealthCheckRequest(service="sparegrid.v1.ClientService"))
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_a_taken_address_is_refused_not_shared(served: Served, tmp_path) -> None:
    from sparegrid.coordinator.app import App
    from sparegrid.coordinator.server import build_server
    from sparegrid.coordinator.settings import Settings
    from sparegrid.coordinator.store.memory import MemoryStore

    other = App(MemoryStore(), Settings(data_dir=tmp_path / "other"))
    with pytest.raises(OSError, match="in use"):
        await build_server(other, served.address)
