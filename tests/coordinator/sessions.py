"""A worker session opened by hand over real gRPC, for RPC-level trust tests."""

from collections.abc import Sequence

from grpc import aio

from sparegrid.v1 import (
    common_pb2,
    worker_pb2,
    worker_pb2_grpc,
)
from sparegrid.wire import REGISTER_TAG, Signer, sha256_hex
from sparegrid.wire.receipt import sign_batch
from tests.coordinator.conftest import Served

Call = aio.StreamStreamCall[worker_pb2.WorkerMessage, worker_pb2.CoordinatorMessage]


CPU = common_pb2.Device(index=0, kind=common_pb2.DEVICE_KIND_CPU, name="cpu")


async def session(
    served: Served,
    signer: Signer,
    owner_key: str = "",
    node_name: str = "raw",
    devices: Sequence[common_pb2.Device] = (CPU,),
) -> tuple[Call, str]:
    call, welcome = await welcomed(served, signer, owner_key, node_name, devices)
    return call, welcome.node_id


async def welcomed(
    served: Served,
    signer: Signer,
    owner_key: str = "",
    node_name: str = "raw",
    devices: Sequence[common_pb2.Device] = (CPU,),
) -> tuple[Call, worker_pb2.Welcome]:
    """A session through its handshake, and the Welcome that ends it; the node offers
    `devices` (one CPU unless told)."""
    stub = worker_pb2_grpc.WorkerServiceStub(served.channel)
    call: Call = stub.Session(metadata=served.auth(owner_key) if owner_key else None)
    await call.write(
        worker_pb2.WorkerMessage(
            hello=worker_pb2.Hello(
                public_key=signer.public_key,
                node_name=node_name,
                devices=devices,
                executors=[worker_pb2.ExecutorInfo(name="echo", version="1")],
            )
        )
    )
    challenge = (await call.read()).challenge
    signed = signer.sign(REGISTER_TAG, challenge.nonce + challenge.session_id.encode())
    answer = worker_pb2.ChallengeResponse(signature=signed)
    await call.write(worker_pb2.WorkerMessage(challenge_response=answer))
    return call, (await call.read()).welcome


async def next_ack(call: Call, credited: list[int] | None = None) -> worker_pb2.ResultAck:
    """The next ResultAck; a Credited message before it (the node was paid in that commit)
    is noted in `credited`."""
    while True:
        message = await call.read()
        assert isinstance(message, worker_pb2.CoordinatorMessage), message
        if message.WhichOneof("body") == "credited":
            if credited is not None:
                credited.append(message.credited.total)
            continue
        return message.result_ack


def signed_results(
    signer: Signer,
    held: list[worker_pb2.Assignment],
    out: bytes,
    names: Sequence[str] = ("out",),
    batch_id: int = 1,
) -> worker_pb2.WorkerMessage:
    """A batch of results, one per assignment, each naming `out` (sent inline, once) as
    its outputs `names`, signed by the node."""
    digest = sha256_hex(out)
    refs = [common_pb2.OutputRef(name=n, digest=digest, size=len(out)) for n in names]
    statements = [
        common_pb2.ResultStatement(
            job_id=a.job_id,
            task_id=a.task_id,
            attempt_id=a.attempt_id,
            node_id=signer.node_id,
            outputs=refs,
        ).SerializeToString()
        for a in held
    ]
    batch = worker_pb2.Results(
        batch_id=batch_id,
        statements=statements,
        signature=sign_batch(signer, statements),
        inline_outputs={digest: out},
    )
    return worker_pb2.WorkerMessage(results=batch)
