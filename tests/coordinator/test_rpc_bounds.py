"""Over real gRPC, on each store: numbers a caller chooses that PostgreSQL would refuse are
refused (or made harmless) before anything is written. On PostgreSQL one refusal inside a
group commit failed the whole group, which ended every worker's session; SQLite failed
only the one call (test_rpc_text.py is the same for a NUL in text)."""

import hashlib
import json
from collections.abc import AsyncIterator

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from sparegrid.coordinator.domain import MAX_BALANCE
from sparegrid.coordinator.services.prices import Price
from sparegrid.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    blob_pb2,
    blob_pb2_grpc,
    client_pb2,
    client_pb2_grpc,
    common_pb2,
    worker_pb2,
)
from sparegrid.wire import Signer
from tests.coordinator.conftest import Served, code_of
from tests.coordinator.sessions import Call, next_ack, session, signed_results

# a Blender 4.2 style .blend: header, one block, ENDB (enough for the coordinator's check)
SCENE = b"BLENDER-v402REND" + (4).to_bytes(4, "little") + bytes(16) + b"abcd" + b"ENDB" + bytes(20)


async def honest_worker(served: Served) -> tuple[Call, Signer, worker_pb2.Assignment]:
    """A volunteer of another owner, holding a task of alice's echo job."""
    _, carol_key = served.app.accounts.create("carol", 100)
    volunteer = Signer.generate()
    honest, _ = await session(served, volunteer, carol_key)
    client = client_pb2_grpc.ClientServiceStub(served.channel)
    spec = client_pb2.JobSpec(kind="echo", params=b'{"tasks": 1}', max_attempts=3)
    await client.SubmitJob(
        client_pb2.SubmitJobRequest(spec=spec), metadata=served.auth(served.alice_key)
    )
    credit = worker_pb2.Credit(device_index=0, count=1)
    await honest.write(worker_pb2.WorkerMessage(credit=credit))
    [held] = (await honest.read()).assign.assignments
    return honest, volunteer, held


async def is_paid(honest: Call, volunteer: Signer, held: worker_pb2.Assignment) -> None:
    """The honest worker's session goes on: its result is taken and paid."""
    await honest.write(signed_results(volunteer, [held], b"hi"))
    credited: list[int] = []
    [verdict] = (await next_ack(honest, credited)).verdicts
    assert verdict.accepted and verdict.credit == 1 and credited == [1]
    honest.cancel()


async def upload(served: Served, key: str, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()

    async def parts() -> AsyncIterator[blob_pb2.UploadBlobRequest]:
        yield blob_pb2.UploadBlobRequest(header=blob_pb2.BlobHeader(digest=digest, size=len(data)))
        yield blob_pb2.UploadBlobRequest(chunk=data)

    await blob_pb2_grpc.BlobServiceStub(served.channel).UploadBlob(
        parts(), metadata=served.auth(key)
    )
    return digest


def huge_render(scene: str, frames: int) -> client_pb2.JobSpec:
    """One task of `frames` frames at 65,536 x 65,536 pixels and 2^24 samples each."""
    params = {"frame_start": 1, "frame_end": frames, "chunk": frames, "samples": 1 << 24}
    params["resolution"] = [65536, 65536]
    return client_pb2.JobSpec(
        kind="render", params=json.dumps(params).encode(), inputs={"scene": scene}
    )


async def test_a_job_of_more_work_than_64_bits_hold_is_refused_and_drops_no_session(
    served: Served,
) -> None:
    honest, volunteer, held = await honest_worker(served)
    admin = admin_pb2_grpc.AdminServiceStub(served.channel)
    grant = admin_pb2.GrantCreditRequest(name="bob", amount=10**15, reason="a large client")
    await admin.GrantCredit(grant, metadata=served.auth(served.admin_key))
    scene = await upload(served, served.bob_key, SCENE)
    # one task of 1,000 frames, 65,536 x 65,536 pixels at 2^24 samples: 7.2e19
    # pixel-samples of work, past a BIGINT; 2.2e13 credit at the default price
    spec = huge_render(scene, frames=1000)
    client = client_pb2_grpc.ClientServiceStub(served.channel)
    md = served.auth(served.bob_key)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.SubmitJob(client_pb2.SubmitJobRequest(spec=spec), metadata=md)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(err.value) == "BAD_PARAMS"
    assert "2^63 - 1" in (err.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as err:  # the estimate's sum is a uint64
        await client.EstimateJob(client_pb2.EstimateJobRequest(spec=spec), metadata=md)
    assert code_of(err.value) == "BAD_PARAMS"
    await is_paid(honest, volunteer, held)
    assert served.app.store.list_jobs(served.app.accounts.get("bob").id) == []


async def test_a_state_named_70000_times_lists_jobs_and_drops_no_session(
    served: Served,
) -> None:
    honest, volunteer, held = await honest_worker(served)
    admin = admin_pb2_grpc.AdminServiceStub(served.channel)
    # each state named was a bound parameter: PostgreSQL takes 65,535 in a statement, and
    # its refusal read as a lost database
    wanted = admin_pb2.ListAllJobsRequest(states=[common_pb2.JOB_STATE_RUNNING] * 70_000)
    listed = await admin.ListAllJobs(wanted, metadata=served.auth(served.admin_key))
    assert [job.state for job in listed.jobs] == [common_pb2.JOB_STATE_RUNNING]
    await is_paid(honest, volunteer, held)


async def test_credit_past_what_the_ledger_holds_is_refused_and_drops_no_session(
    served: Served,
) -> None:
    """More than 2^63 - 1 credit issued in all took the mint's balance past a BIGINT: on
    PostgreSQL every signup after failed its group commit; SQLite kept a float."""
    honest, volunteer, held = await honest_worker(served)
    app, room = served.app, 5
    app.ledger.grant("alice", MAX_BALANCE - app.accounts.issued() - room, key="whale")
    admin = admin_pb2_grpc.AdminServiceStub(served.channel)
    md = served.auth(served.admin_key)
    refusals = [
        admin.GrantCredit(admin_pb2.GrantCreditRequest(name="bob", amount=room + 1), metadata=md),
        admin.CreateAccount(
            admin_pb2.CreateAccountRequest(name="dave", initial_credit=room + 1), metadata=md
        ),
        # 10^20 credit in all: refused before any code is handed out
        admin.CreateInvite(admin_pb2.CreateInviteRequest(uses=100_000, credit=10**15), metadata=md),
        admin.CreateInvite(admin_pb2.CreateInviteRequest(uses=2, credit=room), metadata=md),
    ]
    for call in refusals:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert code_of(err.value) == "CREDIT_LIMIT"
        assert "2^63 - 1" in (err.value.details() or "")
    invite = admin_pb2.CreateInviteRequest(uses=1, credit=room)
    code = (await admin.CreateInvite(invite, metadata=md)).code
    await admin.GrantCredit(admin_pb2.GrantCreditRequest(name="bob", amount=1), metadata=md)
    # the invitation fitted when it was made; its signup, in a group commit, does not now
    client = client_pb2_grpc.ClientServiceStub(served.channel)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.Signup(client_pb2.SignupRequest(code=code, name="erin"))
    assert code_of(err.value) == "CREDIT_LIMIT" and "ask its operator" in (
        err.value.details() or ""
    )
    [unused] = (await admin.ListInvites(admin_pb2.ListInvitesRequest(), metadata=md)).invites
    assert unused.used == 0
    assert [a.name for a in app.store.list_accounts()] == ["admin", "alice", "bob", "carol"]
    assert app.accounts.balance(app.accounts.get("bob")) == 101
    assert app.ledger.check().balanced
    await is_paid(honest, volunteer, held)


async def test_numbers_past_64_bits_in_three_calls_are_refused_not_internal(
    served: Served,
) -> None:
    """An invitation's expiry, an events watch's position and an estimate's hold each met
    INTERNAL past what 64 bits (or a timedelta) hold."""
    honest, volunteer, held = await honest_worker(served)
    admin = admin_pb2_grpc.AdminServiceStub(served.channel)
    md = served.auth(served.admin_key)
    for seconds in (1 << 62, -1):
        invite = admin_pb2.CreateInviteRequest(expires_in=Duration(seconds=seconds), credit=1)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await admin.CreateInvite(invite, metadata=md)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert code_of(err.value) == "BAD_EXPIRY" and "ten years" in (err.value.details() or "")
    assert served.app.store.list_invites() == []
    for after in (1 << 63, (1 << 64) - 1):  # SQLite took no number past a BIGINT
        watch = admin_pb2.WatchEventsRequest(after_seq=after)
        pages = [page async for page in admin.WatchEvents(watch, metadata=md)]
        assert [e for page in pages for e in page.events] == []
    # an operator's price of half a credit per pixel-sample: one task of 127 frames at
    # 65,536 x 65,536 pixels and 2^24 samples (work within 2^63 - 1) would hold 1.4e19
    served.app.settings.prices["render"] = Price(1, 2)
    scene = await upload(served, served.bob_key, SCENE)
    spec = huge_render(scene, frames=127)
    client = client_pb2_grpc.ClientServiceStub(served.channel)
    bob = served.auth(served.bob_key)
    for call in (
        client.EstimateJob(client_pb2.EstimateJobRequest(spec=spec), metadata=bob),
        client.SubmitJob(client_pb2.SubmitJobRequest(spec=spec), metadata=bob),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert code_of(err.value) == "BAD_PARAMS"
        assert "in escrow" in (err.value.details() or "")
    await is_paid(honest, volunteer, held)
