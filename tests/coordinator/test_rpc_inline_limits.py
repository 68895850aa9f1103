"""Over real gRPC: what a result may carry inline is bounded by the coordinator, not only by
the honest worker, and a page of results stays under the size a message may hold."""

import pytest

from sparegrid.coordinator.rpc import client as client_rpc
from sparegrid.v1 import client_pb2, client_pb2_grpc, worker_pb2
from sparegrid.wire import Signer, sha256_hex
from sparegrid.wire.receipt import MAX_INLINE_OUTPUT
from tests.coordinator.conftest import Served
from tests.coordinator.sessions import Call, next_ack, session, signed_results


async def taking(served: Served, tasks: int) -> tuple[Call, Signer, list[worker_pb2.Assignment]]:
    """A vetted node (bob's) holding tasks of a new echo job of alice's: all that the
    coordinator gives it at once (a new node may be kept from some, for checks)."""
    signer = Signer.generate()
    call, _ = await session(served, signer, served.bob_key)
    client = client_pb2_grpc.ClientServiceStub(served.channel)
    spec = client_pb2.JobSpec(kind="echo", params=f'{{"tasks": {tasks}}}'.encode())
    await client.SubmitJob(
        client_pb2.SubmitJobRequest(spec=spec), metadata=served.auth(served.alice_key)
    )
    await call.write(
        worker_pb2.WorkerMessage(credit=worker_pb2.Credit(device_index=0, count=tasks))
    )
    return call, signer, list((await call.read()).assign.assignments)


async def test_an_inline_output_over_the_limit_is_refused_unpaid_and_struck(
    served: Served,
) -> None:
    call, signer, [held] = await taking(served, 1)
    big = b"x" * (MAX_INLINE_OUTPUT + 1)
    await call.write(signed_results(signer, [held], big))
    [verdict] = (await next_ack(call)).verdicts
    assert not verdict.accepted and verdict.code == "INLINE_TOO_LARGE"
    assert "upload" in verdict.message
    store = served.app.store
    assert store.get_inline_blob(sha256_hex(big)) is None  # nothing kept
    assert store.balances("node:") == {}  # nothing paid
    node = store.get_node(signer.node_id)
    assert node is not None and served.app.reputations.get(node.id).strikes == 1
    call.cancel()


async def test_one_inline_blob_named_by_several_outputs_counts_once(served: Served) -> None:
    """Five outputs with the same 4 MiB content go inline as one blob (the worker sends
    each digest once): 4 MiB, within the bound, where counting each name would refuse an
    honest result and strike its node."""
    call, signer, [held] = await taking(served, 1)
    same = b"s" * MAX_INLINE_OUTPUT
    names = [f"out{n}" for n in range(5)]
    await call.write(signed_results(signer, [held], same, names=names))
    [verdict] = (await next_ack(call)).verdicts
    assert verdict.accepted, verdict.message
    node = served.app.store.get_node(signer.node_id)
    assert node is not None and served.app.reputations.get(node.id).strikes == 0
    call.cancel()


async def test_an_output_name_past_the_limit_is_refused(served: Served) -> None:
    call, signer, [held] = await taking(served, 1)
    await call.write(signed_results(signer, [held], b"hi", names=["n" * 257]))
    [verdict] = (await next_ack(call)).verdicts
    assert not verdict.accepted and verdict.code == "BAD_OUTPUT"
    assert "256 characters" in verdict.message
    call.cancel()


async def test_results_with_large_inline_outputs_come_a_few_per_page(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client_rpc, "PAGE_INLINE_BYTES", 250)  # about 2 outputs of 100 bytes
    call, signer, held = await taking(served, 8)
    assert len(held) >= 3
    for n, assignment in enumerate(held):  # each result its own output
        await call.write(signed_results(signer, [assignment], bytes([n]) * 100))
        while (message := await call.read()).WhichOneof("body") != "result_ack":
            pass  # new assignments, credited
        assert message.result_ack.verdicts[0].accepted
    client = client_pb2_grpc.ClientServiceStub(served.channel)
    pages, token = [], ""
    while True:
        request = client_pb2.GetJobResultsRequest(job_id=held[0].job_id, page_token=token)
        page = await client.GetJobResults(request, metadata=served.auth(served.alice_key))
        pages.append({r.index: sum(map(len, r.inline_outputs.values())) for r in page.results})
        token = page.next_page_token
        if not token:
            break
    assert all(sum(p.values()) <= 250 for p in pages)  # two results of 100 bytes a page
    tasks = served.app.store.get_tasks([a.task_id for a in held])
    carried = sorted(i for p in pages for i, size in p.items() if size)
    assert carried == sorted(t.index for t in tasks)  # every result, once
    assert len([p for p in pages if any(p.values())]) == (len(held) + 1) // 2
    call.cancel()
