"""Over real gRPC: a reset Credit withdraws a paused device's credit, a PREEMPTED failure
sends the task straight back out, and the verdict says what the result was paid."""

from grpc import aio

from sparegrid.v1 import client_pb2, client_pb2_grpc, common_pb2, worker_pb2, worker_pb2_grpc
from sparegrid.wire import REGISTER_TAG, Signer, sha256_hex
from sparegrid.wire.receipt import sign_batch
from tests.coordinator.conftest import Served
from tests.coordinator.sessions import next_ack

Call = aio.StreamStreamCall  # type: ignore[type-arg]


async def open_session(served: Served, signer: Signer) -> Call:
    stub = worker_pb2_grpc.WorkerServiceStub(served.channel)
    call = stub.Session(metadata=served.auth(served.bob_key))  # owned by bob: a vetted node
    hello = worker_pb2.Hello(
        public_key=signer.public_key,
        node_name="gamer",
        devices=[common_pb2.Device(index=0, kind=common_pb2.DEVICE_KIND_CPU, name="cpu")],
        executors=[worker_pb2.ExecutorInfo(name="echo", version="1")],
    )
    await call.write(worker_pb2.WorkerMessage(hello=hello))
    challenge = (await call.read()).challenge
    signed = signer.sign(REGISTER_TAG, challenge.nonce + challenge.session_id.encode())
    answer = worker_pb2.ChallengeResponse(signature=signed)
    await call.write(worker_pb2.WorkerMessage(challenge_response=answer))
    assert (await call.read()).welcome.node_id == signer.node_id
    return call


def credit(count: int, reset: bool = False) -> worker_pb2.WorkerMessage:
    return worker_pb2.WorkerMessage(
        credit=worker_pb2.Credit(device_index=0, count=count, reset=reset)
    )


async def test_reset_credit_preempted_failure_and_paid_verdict(served: Served) -> None:
    signer = Signer.generate()
    call = await open_session(served, signer)
    await call.write(credit(5))
    await call.write(credit(0, reset=True))  # the owner came back
    await call.write(credit(1, reset=True))  # ...and left: room for exactly one task
    client = client_pb2_grpc.ClientServiceStub(served.channel)
    spec = client_pb2.JobSpec(kind="echo", params=b'{"tasks": 3}', max_attempts=1)
    request = client_pb2.SubmitJobRequest(spec=spec)
    job = (await client.SubmitJob(request, metadata=served.auth(served.alice_key))).job
    [first] = (await call.read()).assign.assignments  # one, not 3: the reset held
    failure = worker_pb2.TaskFailure(
        attempt_id=first.attempt_id,
        code="PREEMPTED",
        message="paused: owner active",
        retryable=True,
    )
    failures = worker_pb2.Failures(batch_id=1, failures=[failure])
    await call.write(worker_pb2.WorkerMessage(failures=failures))
    ack = await next_ack(call)
    assert ack.batch_id == 1 and ack.verdicts[0].accepted
    await call.write(credit(1))
    [again] = (await call.read()).assign.assignments
    assert again.task_id == first.task_id and again.attempt_id != first.attempt_id
    out = b"ok"
    statement = common_pb2.ResultStatement(
        job_id=again.job_id,
        task_id=again.task_id,
        attempt_id=again.attempt_id,
        node_id=signer.node_id,
        outputs=[common_pb2.OutputRef(name="out", digest=sha256_hex(out), size=len(out))],
    ).SerializeToString()
    results = worker_pb2.Results(
        batch_id=2,
        statements=[statement],
        signature=sign_batch(signer, [statement]),
        inline_outputs={sha256_hex(out): out},
    )
    await call.write(worker_pb2.WorkerMessage(results=results))
    ack = await next_ack(call)
    assert ack.verdicts[0].accepted and ack.verdicts[0].credit == 1
    node = served.app.store.get_node(signer.node_id)
    assert node is not None and node.tasks_failed == 0
    got = await client.GetJob(
        client_pb2.GetJobRequest(job_id=job.job_id), metadata=served.auth(served.alice_key)
    )
    assert got.job.counts.succeeded == 1 and got.job.state != common_pb2.JOB_STATE_FAILED
    call.cancel()
