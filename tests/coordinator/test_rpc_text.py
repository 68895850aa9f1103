"""Over real gRPC, on each store: a NUL character in what a worker sends (PostgreSQL's text
cannot hold one) costs nobody else anything. Before, on PostgreSQL, it failed the whole
group commit, which dropped every worker's session."""

from sparegrid.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    client_pb2,
    client_pb2_grpc,
    common_pb2,
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
    assert names[rogue_id] == "evil?name"  # what an operator's terminal shows
    [failed] = served.app.store.get_attempts([taken.attempt_id])
    assert failed.state.value == "failed" and failed.error == "it?failed"
    assert failed.error_code == "BAD?CODE"
    honest.cancel()
    rogue.cancel()


async def test_a_nodes_failure_reaches_the_clients_terminal_without_escapes(
    served: Served,
) -> None:
    """A rogue node fails alice's task with a message (and a code) that would clear her
    terminal, retitle its window and reverse the text after it, and names itself so for
    the operator: `job get` and `admin nodes` show each such character as "?"."""
    hostile = "\x1b]0;pwned\x07\x1b[2J\u202eevil\r\nerror: forged"
    device = common_pb2.Device(
        index=0, kind=common_pb2.DEVICE_KIND_CPU, name=f"cpu{hostile}", driver_version="\x1b[8m1"
    )
    rogue, rogue_id = await session(
        served, Signer.generate(), served.bob_key, node_name=f"n{hostile}", devices=[device]
    )
    client = client_pb2_grpc.ClientServiceStub(served.channel)
    spec = client_pb2.JobSpec(kind="echo", params=b'{"tasks": 1}', max_attempts=1)
    job_id = (
        await client.SubmitJob(
            client_pb2.SubmitJobRequest(spec=spec), metadata=served.auth(served.alice_key)
        )
    ).job.job_id
    await rogue.write(credit(1))
    [taken] = (await rogue.read()).assign.assignments
    failure = worker_pb2.TaskFailure(
        attempt_id=taken.attempt_id, code="BAD_INPUT\x1b[8m", message=hostile, retryable=False
    )
    await rogue.write(
        worker_pb2.WorkerMessage(failures=worker_pb2.Failures(batch_id=1, failures=[failure]))
    )
    assert (await next_ack(rogue)).verdicts[0].accepted
    job = (
        await client.GetJob(
            client_pb2.GetJobRequest(job_id=job_id), metadata=served.auth(served.alice_key)
        )
    ).job
    assert job.state == common_pb2.JOB_STATE_FAILED
    assert "?]0;pwned??[2J?evil? error: forged" in job.error
    assert "BAD_INPUT?[8m" in job.error
    admin = admin_pb2_grpc.AdminServiceStub(served.channel)
    nodes = await admin.ListNodes(
        admin_pb2.ListNodesRequest(), metadata=served.auth(served.admin_key)
    )
    [node] = [n for n in nodes.nodes if n.node_id == rogue_id]
    assert node.name.isprintable() and node.name.startswith("n?]0;pwned")
    [shown] = node.devices  # its device's name and driver too
    assert shown.name.startswith("cpu?]0;pwned") and shown.name.isprintable()
    assert shown.driver_version == "?[8m1"
    rogue.cancel()


async def test_an_output_named_with_escapes_is_refused_and_paid_nothing(
    served: Served,
) -> None:
    """An output's name is signed with the result, so it cannot be made printable as a
    failure's text is: a result naming one with a terminal escape (which `job results`
    would list) is refused BAD_OUTPUT, its attempt ends, and its node is paid nothing."""
    signer = Signer.generate()
    rogue, rogue_id = await session(served, signer, served.bob_key)
    client = client_pb2_grpc.ClientServiceStub(served.channel)
    spec = client_pb2.JobSpec(kind="echo", params=b'{"tasks": 1}', max_attempts=2)
    await client.SubmitJob(
        client_pb2.SubmitJobRequest(spec=spec), metadata=served.auth(served.alice_key)
    )
    await rogue.write(credit(1))
    [taken] = (await rogue.read()).assign.assignments
    await rogue.write(signed_results(signer, [taken], b"hi", names=("\x1b[2Jout",)))
    [verdict] = (await next_ack(rogue)).verdicts
    assert (verdict.accepted, verdict.code) == (False, "BAD_OUTPUT")
    assert "not printable" in verdict.message
    [attempt] = served.app.store.get_attempts([taken.attempt_id])
    assert attempt.state.value == "failed"
    assert served.app.store.balance(f"node:{rogue_id}") == 0
    rogue.cancel()
