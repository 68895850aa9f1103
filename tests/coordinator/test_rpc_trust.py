"""The trust layer's RPCs on a real grpc.aio server: owners, node credit, ban, policies."""

import grpc
import pytest
from grpc import aio

from sparegrid.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    client_pb2,
    client_pb2_grpc,
    common_pb2,
    worker_pb2,
)
from sparegrid.wire import Signer, sha256_hex
from sparegrid.wire.receipt import sign_batch, verify_countersignature
from tests.coordinator.conftest import Served, code_of
from tests.coordinator.sessions import next_ack, session, welcomed


async def test_a_worker_proves_its_owner_with_the_owners_key(served: Served) -> None:
    admin = admin_pb2_grpc.AdminServiceStub(served.channel)
    owned, anonymous = Signer.generate(), Signer.generate()
    call1, owned_id = await session(served, owned, served.alice_key)
    call2, anon_id = await session(served, anonymous)
    nodes = await admin.ListNodes(
        admin_pb2.ListNodesRequest(), metadata=served.auth(served.admin_key)
    )
    owners = {n.node_id: n.owner for n in nodes.nodes}
    assert owners == {owned_id: "alice", anon_id: f"node:{anon_id}"}
    assert all(n.standing == admin_pb2.NODE_STANDING_ACTIVE for n in nodes.nodes)
    call1.cancel()
    call2.cancel()


async def test_a_wrong_owner_key_is_refused(served: Served) -> None:
    with pytest.raises(aio.AioRpcError) as err:
        await session(served, Signer.generate(), "sg_not_a_key")
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert code_of(err.value) == "BAD_API_KEY"
    admin = admin_pb2_grpc.AdminServiceStub(served.channel)
    nodes = await admin.ListNodes(
        admin_pb2.ListNodesRequest(), metadata=served.auth(served.admin_key)
    )
    assert list(nodes.nodes) == []


async def test_a_node_key_answers_for_the_first_owner_it_proved(served: Served) -> None:
    """A node of alice's reconnecting with bob's key, or with none, is refused and stays
    alice's: its failures, read back after a restart as its owner's, would otherwise
    count as a second owner's beside alice's next one (ending a task on one owner's
    word, or paying one owner's timeouts twice). With alice's key it connects again; an
    anonymous node may prove an account later."""
    admin = admin_pb2_grpc.AdminServiceStub(served.channel)

    async def owners() -> dict[str, str]:
        nodes = await admin.ListNodes(
            admin_pb2.ListNodesRequest(), metadata=served.auth(served.admin_key)
        )
        return {n.node_id: n.owner for n in nodes.nodes}

    signer, later = Signer.generate(), Signer.generate()
    call, node_id = await session(served, signer, served.alice_key)
    call.cancel()
    for key in (served.bob_key, ""):
        with pytest.raises(aio.AioRpcError) as err:
            await session(served, signer, key)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert code_of(err.value) == "NODE_OWNER_CHANGED"
        assert "--data-dir" in (err.value.details() or "")
        assert await owners() == {node_id: "alice"}
    call, _ = await session(served, signer, served.alice_key)
    call.cancel()
    call, later_id = await session(served, later)
    call.cancel()
    call, _ = await session(served, later, served.bob_key)
    call.cancel()
    assert (await owners())[later_id] == "bob"


async def test_info_offers_the_countersigning_key_and_prices(served: Served) -> None:
    stub = client_pb2_grpc.ClientServiceStub(served.channel)
    info = await stub.GetInfo(client_pb2.GetInfoRequest(), metadata=served.auth(served.bob_key))
    assert info.coordinator_public_key == served.app.signer.public_key
    kinds = {k.name: (k.price_credit, k.price_units, k.work_unit) for k in info.kinds}
    assert kinds == {
        "echo": (1, 1, "task"),
        "checksum": (1, 1 << 20, "byte"),
        "inference": (1, 100, "GFLOP"),
        "generate": (1, 1000, "token"),
        "render": (1, 10_000_000, "pixel-sample"),
    }


async def test_a_bad_policy_is_invalid_argument(served: Served) -> None:
    stub = client_pb2_grpc.ClientServiceStub(served.channel)
    spec = client_pb2.JobSpec(kind="echo", params=b'{"tasks": 1}', replicas=4, quorum=2)
    with pytest.raises(aio.AioRpcError) as err:
        await stub.SubmitJob(
            client_pb2.SubmitJobRequest(spec=spec), metadata=served.auth(served.alice_key)
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(err.value) == "BAD_POLICY" and "majority" in (err.value.details() or "")


async def test_the_owner_sees_its_nodes_credit_and_why(served: Served) -> None:
    client = client_pb2_grpc.ClientServiceStub(served.channel)
    alice, bob = served.auth(served.alice_key), served.auth(served.bob_key)
    job = (
        await client.SubmitJob(
            client_pb2.SubmitJobRequest(
                spec=client_pb2.JobSpec(kind="echo", params=b'{"tasks": 2}')
            ),
            metadata=bob,
        )
    ).job
    signer = Signer.generate()
    call, node_id = await session(served, signer, served.alice_key)
    await call.write(worker_pb2.WorkerMessage(credit=worker_pb2.Credit(device_index=0, count=5)))
    assign = (await call.read()).assign
    out = b""
    statements = [
        common_pb2.ResultStatement(
            job_id=a.job_id,
            task_id=a.task_id,
            attempt_id=a.attempt_id,
            node_id=node_id,
            outputs=[common_pb2.OutputRef(name="out", digest=sha256_hex(out), size=0)],
        ).SerializeToString()
        for a in assign.assignments
    ]
    results = worker_pb2.Results(
        batch_id=1,
        statements=statements,
        signature=sign_batch(signer, statements),
        inline_outputs={sha256_hex(out): out},
    )
    await call.write(worker_pb2.WorkerMessage(results=results))
    credited: list[int] = []
    assert all(v.accepted for v in (await next_ack(call, credited)).verdicts)
    view = await client.GetNodeCredit(
        client_pb2.GetNodeCreditRequest(node_id=node_id), metadata=alice
    )
    assert view.owner == "alice" and view.balance == 2 and view.standing == "active"
    assert credited == [2]  # the worker is told the ledger's figure, as the owner sees it
    call.cancel()
    _, welcome = await welcomed(served, signer, served.alice_key)
    assert welcome.credited == 2  # and again at each session start
    assert {(e.job_id, e.amount) for e in view.entries} == {(job.job_id, 1)}
    assert all(e.task_id.startswith(job.job_id) and "unchecked" in e.reason for e in view.entries)
    with pytest.raises(aio.AioRpcError) as err:
        await client.GetNodeCredit(client_pb2.GetNodeCreditRequest(node_id=node_id), metadata=bob)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and code_of(err.value) == "NODE_NOT_FOUND"
    got = await client.GetJobResults(
        client_pb2.GetJobResultsRequest(job_id=job.job_id), metadata=bob
    )
    for r in got.results:
        v = verify_countersignature(r.receipt, served.app.signer.public_key)
        assert v.method == common_pb2.VALIDATION_METHOD_UNCHECKED and v.credit == 1
    call.cancel()


async def test_ban_and_reinstate(served: Served) -> None:
    admin = admin_pb2_grpc.AdminServiceStub(served.channel)
    root = served.auth(served.admin_key)
    with pytest.raises(aio.AioRpcError) as err:
        await admin.BanNode(admin_pb2.BanNodeRequest(node_id="nope"), metadata=root)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and code_of(err.value) == "NODE_NOT_FOUND"
    with pytest.raises(aio.AioRpcError) as err:
        await admin.BanNode(
            admin_pb2.BanNodeRequest(node_id="x"), metadata=served.auth(served.alice_key)
        )
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    call, node_id = await session(served, Signer.generate())
    banned = await admin.BanNode(
        admin_pb2.BanNodeRequest(node_id=node_id, reason="junk"), metadata=root
    )
    assert banned.node.standing == admin_pb2.NODE_STANDING_BANNED
    assert banned.node.standing_reason == "junk"
    back = await admin.ReinstateNode(admin_pb2.ReinstateNodeRequest(node_id=node_id), metadata=root)
    assert back.node.standing == admin_pb2.NODE_STANDING_ACTIVE
    assert back.node.standing_reason == "reinstated by the operator"
    call.cancel()


async def test_a_reinstated_node_hears_its_new_standing(served: Served) -> None:
    """A ban ends the node's session, and so does a reinstatement: the worker hears each
    standing in the Welcome of its next session (`worker status` shows it)."""
    admin = admin_pb2_grpc.AdminServiceStub(served.channel)
    root = served.auth(served.admin_key)
    signer = Signer.generate()
    call, node_id = await session(served, signer, served.bob_key)
    await admin.BanNode(admin_pb2.BanNodeRequest(node_id=node_id, reason="junk"), metadata=root)
    assert await call.read() == aio.EOF
    call, welcome = await welcomed(served, signer, served.bob_key)
    assert (welcome.standing, welcome.standing_reason) == ("banned", "junk")
    await admin.ReinstateNode(admin_pb2.ReinstateNodeRequest(node_id=node_id), metadata=root)
    assert await call.read() == aio.EOF  # the session ends: nothing in it says so otherwise
    call, welcome = await welcomed(served, signer, served.bob_key)
    assert welcome.standing == "active"
    call.cancel()


async def test_enrollment_owners_refuses_a_node_without_an_owner_account(
    served: Served,
) -> None:
    from sparegrid.coordinator.services.identity import Enrollment

    served.app.identities.config.enrollment = Enrollment.OWNERS
    with pytest.raises(aio.AioRpcError) as err:
        await session(served, Signer.generate())
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert code_of(err.value) == "OWNER_REQUIRED" and "SPAREGRID_OWNER_KEY" in (
        err.value.details() or ""
    )
    call, node_id = await session(served, Signer.generate(), served.alice_key)
    assert node_id
    call.cancel()


async def test_enrollment_approve_gives_a_new_node_work_only_once_approved(
    served: Served,
) -> None:
    from sparegrid.coordinator.services.identity import Enrollment

    served.app.identities.config.enrollment = Enrollment.APPROVE
    admin = admin_pb2_grpc.AdminServiceStub(served.channel)
    client = client_pb2_grpc.ClientServiceStub(served.channel)
    job = await client.SubmitJob(
        client_pb2.SubmitJobRequest(spec=client_pb2.JobSpec(kind="echo", params=b'{"tasks": 1}')),
        metadata=served.auth(served.bob_key),
    )
    signer = Signer.generate()
    call, node_id = await session(served, signer, served.alice_key)
    await call.write(worker_pb2.WorkerMessage(credit=worker_pb2.Credit(device_index=0, count=5)))
    listed = await admin.ListNodes(
        admin_pb2.ListNodesRequest(), metadata=served.auth(served.admin_key)
    )
    [node] = listed.nodes
    assert node.standing == admin_pb2.NODE_STANDING_PENDING and "approve" in node.standing_reason
    got = await client.GetJob(
        client_pb2.GetJobRequest(job_id=job.job.job_id), metadata=served.auth(served.bob_key)
    )
    assert got.job.waiting == "no worker is connected"  # a pending node is offered no work
    with pytest.raises(aio.AioRpcError) as err:
        await admin.ApproveNode(
            admin_pb2.ApproveNodeRequest(node_id="nope"), metadata=served.auth(served.admin_key)
        )
    assert code_of(err.value) == "NODE_NOT_FOUND"
    approved = await admin.ApproveNode(
        admin_pb2.ApproveNodeRequest(node_id=node_id), metadata=served.auth(served.admin_key)
    )
    assert approved.node.standing == admin_pb2.NODE_STANDING_ACTIVE
    assert await call.read() == aio.EOF  # its session ends: the next Welcome says "active"
    call, welcome = await welcomed(served, signer, served.alice_key)
    assert welcome.standing == "active"
    await call.write(worker_pb2.WorkerMessage(credit=worker_pb2.Credit(device_index=0, count=5)))
    assert len((await call.read()).assign.assignments) == 1
    call.cancel()


async def test_an_upload_names_only_attempts_of_its_own_node(served: Served) -> None:
    """A worker uploads an output for its attempt; a result naming it is accepted. An
    upload for another node's attempt is refused, and a result naming a blob the node never
    uploaded for that attempt is refused and struck."""
    from sparegrid.v1 import blob_pb2, blob_pb2_grpc

    client = client_pb2_grpc.ClientServiceStub(served.channel)
    await client.SubmitJob(
        client_pb2.SubmitJobRequest(spec=client_pb2.JobSpec(kind="echo", params=b'{"tasks": 2}')),
        metadata=served.auth(served.bob_key),
    )
    signer = Signer.generate()
    call, node_id = await session(served, signer, served.alice_key)
    await call.write(worker_pb2.WorkerMessage(credit=worker_pb2.Credit(device_index=0, count=2)))
    first, second = (await call.read()).assign.assignments
    token = next(t for t, n in served.app.session_tokens.items() if n == node_id)
    blobs = blob_pb2_grpc.BlobServiceStub(served.channel)
    big = b"x" * 100_000
    digest = sha256_hex(big)

    async def upload(attempt_ids: list[str]) -> blob_pb2.UploadBlobResponse:
        header = blob_pb2.BlobHeader(digest=digest, size=len(big), attempt_ids=attempt_ids)

        async def requests():  # type: ignore[no-untyped-def]
            yield blob_pb2.UploadBlobRequest(header=header)
            yield blob_pb2.UploadBlobRequest(chunk=big)

        return await blobs.UploadBlob(requests(), metadata=(("authorization", f"Session {token}"),))

    with pytest.raises(aio.AioRpcError) as err:
        await upload(["someone-elses-attempt"])
    assert code_of(err.value) == "NOT_LEASED"
    await upload([first.attempt_id])
    statements = [
        common_pb2.ResultStatement(
            job_id=a.job_id,
            task_id=a.task_id,
            attempt_id=a.attempt_id,
            node_id=node_id,
            outputs=[common_pb2.OutputRef(name="out", digest=digest, size=len(big))],
        ).SerializeToString()
        for a in (first, second)
    ]
    results = worker_pb2.Results(
        batch_id=1, statements=statements, signature=sign_batch(signer, statements)
    )
    await call.write(worker_pb2.WorkerMessage(results=results))
    verdicts = (await next_ack(call)).verdicts
    assert [(v.accepted, v.code) for v in verdicts] == [
        (True, ""),
        (False, "OUTPUT_NOT_UPLOADED"),
    ]
    assert served.app.reputations.get(node_id).strikes == 1
    call.cancel()
