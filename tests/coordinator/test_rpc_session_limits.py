"""Over real gRPC: a worker session's handshake has a deadline, and a session that floods
heartbeats is ended, while an honest worker's heartbeats keep its lease."""

import grpc
import pytest
from grpc import aio

from sparegrid.coordinator.rpc import worker as worker_rpc
from sparegrid.v1 import client_pb2, client_pb2_grpc, common_pb2, worker_pb2, worker_pb2_grpc
from sparegrid.wire import Signer
from tests.coordinator.conftest import Served, code_of
from tests.coordinator.sessions import session

HEARTBEAT = worker_pb2.WorkerMessage(heartbeat=worker_pb2.Heartbeat())


async def test_a_stream_that_never_says_hello_is_ended(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(worker_rpc, "HANDSHAKE_SECONDS", 0.5)
    call = worker_pb2_grpc.WorkerServiceStub(served.channel).Session()
    with pytest.raises(aio.AioRpcError) as err:
        await call.read()
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert code_of(err.value) == "HANDSHAKE_TIMEOUT" and "Hello" in (err.value.details() or "")


async def test_a_challenge_never_answered_ends_the_stream(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(worker_rpc, "HANDSHAKE_SECONDS", 0.5)
    signer = Signer.generate()
    call = worker_pb2_grpc.WorkerServiceStub(served.channel).Session()
    hello = worker_pb2.Hello(
        public_key=signer.public_key,
        node_name="mute",
        devices=[common_pb2.Device(index=0, kind=common_pb2.DEVICE_KIND_CPU, name="cpu")],
    )
    await call.write(worker_pb2.WorkerMessage(hello=hello))
    assert (await call.read()).HasField("challenge")
    with pytest.raises(aio.AioRpcError) as err:
        await call.read()
    assert code_of(err.value) == "HANDSHAKE_TIMEOUT"
    assert "ChallengeResponse" in (err.value.details() or "")
    assert served.app.store.get_node(signer.node_id) is None  # never attached


async def test_a_heartbeat_flood_renews_no_more_and_ends_the_session(served: Served) -> None:
    honest, honest_id = await session(served, Signer.generate(), served.alice_key)
    rogue, rogue_id = await session(served, Signer.generate(), served.bob_key)
    client = client_pb2_grpc.ClientServiceStub(served.channel)
    spec = client_pb2.JobSpec(kind="echo", params=b'{"tasks": 1}')
    await client.SubmitJob(
        client_pb2.SubmitJobRequest(spec=spec), metadata=served.auth(served.alice_key)
    )
    await rogue.write(worker_pb2.WorkerMessage(credit=worker_pb2.Credit(device_index=0, count=1)))
    assert len((await rogue.read()).assign.assignments) == 1  # it holds a lease: renewable
    store = served.app.store
    renewals = []
    renew = store.renew_leases

    def counted(*args: object) -> int:
        renewals.append(args)
        return renew(*args)  # type: ignore[arg-type]

    store.renew_leases = counted  # type: ignore[method-assign]
    for _ in range(worker_rpc.HEARTBEAT_FLOOD + 1):
        await rogue.write(HEARTBEAT)
    with pytest.raises(aio.AioRpcError) as err:
        while True:
            await rogue.read()
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert code_of(err.value) == "TOO_MANY_HEARTBEATS"
    assert len(renewals) == 1  # the first renewed the lease, the flood none
    await honest.write(HEARTBEAT)  # the other session goes on
    sessions = served.app.scheduler.sessions
    assert honest_id in sessions and rogue_id not in sessions
    honest.cancel()


async def test_a_device_index_past_the_bound_is_refused_at_hello(served: Served) -> None:
    """An attempt stores its device index (a 32-bit column on PostgreSQL): 2^32-1 failed
    every dispatch that leased the node a task, which dropped every worker's session."""
    signer = Signer.generate()
    call = worker_pb2_grpc.WorkerServiceStub(served.channel).Session()
    device = common_pb2.Device(index=2**32 - 1, kind=common_pb2.DEVICE_KIND_CPU, name="cpu")
    hello = worker_pb2.Hello(public_key=signer.public_key, node_name="far", devices=[device])
    await call.write(worker_pb2.WorkerMessage(hello=hello))
    with pytest.raises(aio.AioRpcError) as err:
        await call.read()
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(err.value) == "BAD_HELLO" and "0 to 1023" in (err.value.details() or "")


async def test_an_idempotency_key_past_the_bound_is_refused_and_nothing_stops(
    served: Served,
) -> None:
    """A 10 kB key went into the ledger's unique index: on PostgreSQL the statement failed
    and the coordinator, taking that for a lost database, stopped."""
    client = client_pb2_grpc.ClientServiceStub(served.channel)
    alice = served.auth(served.alice_key)
    with pytest.raises(aio.AioRpcError) as err:
        await client.Stake(
            client_pb2.StakeRequest(amount=1, idempotency_key="k" * 10_000), metadata=alice
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(err.value) == "BAD_IDEMPOTENCY_KEY"
    staked = await client.Stake(
        client_pb2.StakeRequest(amount=1, idempotency_key="k1"), metadata=alice
    )
    assert staked.stake == 1  # still serving, and nothing of the refused call was booked
