"""Over real gRPC, on each store: a NUL character in what a worker sends (PostgreSQL's text
cannot hold one) costs nobody else anything. Before, on PostgreSQL, it failed the whole
group commit, which dropped every worker's session."""

from sparegrid.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    client_pb2,
    client_pb2_grpc,
    worker_pb2,
)
from sparegrid.wire import Signer
from tests.coordinator.conftest import Served
from tests.coordinator.sessions import next_ack, session, signed_results


def credit(count: int) -> worker_pb2.WorkerMessage:
    return worker_pb2.WorkerMessage(credit=worker_pb2.Credit(device_index=0, count=count))


async def test_a_nul_in_a_workers_name_and_failure_drops_no_other_session(
    served: Served,
) -> None:
    _, carol_key = served.app.accounts.create("carol", 100)
    volunteer = Signer.generate()
    honest, _ = await session(served, volunteer, carol_key)
    rogue, rogue_id = await session(
        served, Signer.generate(), served.bob_key, node_name="evil\x00name"
    )
    client = client_pb2_grpc.ClientServiceStub(served.channel)
    spec = client_pb2.JobSpec(kind="echo", params=b'{"tasks": 2}', max_attempts=3)
    request = client_pb2.SubmitJobRequest(spec=spec)
    await client.SubmitJob(request, metadata=served.auth(served.alice_key))
    await honest.write(credit(1))
    [other] = (await honest.read()).assign.assignments
    await rogue.write(credit(1))
    [taken] = (await rogue.read()).assign.assignments
    failure = worker_pb2.TaskFailure(
        attempt_id=taken.attempt_id, code="BAD\x00CODE", message="it\x00failed", retryable=True
    )
    # and one naming an attempt that is not its own: its id goes into a strike's reason
    stranger = worker_pb2.TaskFailure(attempt_id="nobody\x00s", code="X", message="y")
    await rogue.write(
        worker_pb2.WorkerMessage(
            failures=worker_pb2.Failures(batch_id=1, failures=[failure, stranger])
        )
    )
    ack = await next_ack(rogue)
    assert [v.accepted for v in ack.verdicts] == [True, False]
    # the honest worker's session goes on: its result is taken and paid
    await honest.write(signed_results(volunteer, [other], b"hi"))
    assert (await next_ack(honest)).verdicts[0].accepted
    admin = admin_pb2_grpc.AdminServiceStub(served.channel)
    nodes = await admin.ListNodes(
        admin_pb2.ListNodesRequest(), metadata=served.auth(served.admin_key)
    )
    names = {n.node_id: n.name for n in nodes.nodes}
    assert names[rogue_id] in ("evil\x00name", "evil\ufffdname")  # PostgreSQL: U+FFFD
    [failed] = served.app.store.get_attempts([taken.attempt_id])
    assert failed.state.value == "failed" and failed.error.endswith("failed")
    honest.cancel()
    rogue.cancel()
