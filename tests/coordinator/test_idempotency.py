"""An idempotency key names one job: an identical retry gets it back, a submit of another
spec under the same key is refused (IDEMPOTENCY_KEY_REUSED), naming what differs."""

import dataclasses

import grpc
import pytest
from grpc import aio

from sparegrid.coordinator.domain import Requirements, client_account
from sparegrid.coordinator.errors import CoordinatorError, ErrorKind
from sparegrid.coordinator.services.jobs import JobSpec
from sparegrid.v1 import client_pb2, client_pb2_grpc
from tests.coordinator.conftest import Served, code_of
from tests.coordinator.helpers import make_app, make_client

FIRST = JobSpec(
    kind="echo",
    name="nightly",
    params=b'{"tasks": 3, "data": "x"}',
    requirements=Requirements(device_kind="cpu"),
    max_attempts=2,
    idempotency_key="k1",
)

CHANGES = [
    ({"params": b'{"tasks": 4, "data": "x"}'}, "task count is 3, not 4"),
    ({"params": b'{"tasks": 3, "data": "y"}'}, "params differ in ['data']"),
    ({"name": "weekly"}, "name is 'nightly', not 'weekly'"),
    ({"kind": "checksum"}, "kind is 'echo', not 'checksum'"),
    ({"inputs": {"data": "0" * 64}}, "inputs differ in ['data']"),
    ({"requirements": Requirements(device_kind="cuda")}, "requirements differ"),
    ({"replicas": 2, "quorum": 2}, "policy is 0 of 0, not 2 of 2"),
    ({"max_attempts": 5}, "attempt limit is 2, not 5"),
]


@pytest.mark.parametrize(("change", "said"), CHANGES, ids=[c[1] for c in CHANGES])
def test_a_key_reused_with_another_spec_is_refused(tmp_path, change, said) -> None:
    app = make_app(tmp_path)
    alice = make_client(app, credit=100)
    first = app.jobs.submit(alice, FIRST)
    balance = app.store.balance(client_account("alice"))
    with pytest.raises(CoordinatorError) as err:
        app.jobs.submit(alice, dataclasses.replace(FIRST, **change))
    assert (err.value.kind, err.value.code) == (ErrorKind.EXISTS, "IDEMPOTENCY_KEY_REUSED")
    assert said in err.value.message and first.id in err.value.message
    assert app.store.balance(client_account("alice")) == balance  # nothing changed
    assert [j.id for j in app.store.list_jobs()] == [first.id]


def test_the_same_spec_again_returns_the_first_job(tmp_path) -> None:
    app = make_app(tmp_path)
    alice = make_client(app, credit=100)
    first = app.jobs.submit(alice, FIRST)
    # the same params in another key order, the default attempt limit spelt out
    again = dataclasses.replace(FIRST, params=b'{"data": "x", "tasks": 3}')
    assert app.jobs.submit(alice, again).id == first.id
    default = dataclasses.replace(FIRST, max_attempts=0, idempotency_key="k2")
    second = app.jobs.submit(alice, default)
    assert app.jobs.submit(alice, dataclasses.replace(default, max_attempts=3)).id == second.id
    # another account's key is its own
    bob = make_client(app, name="bob", credit=100)
    assert app.jobs.submit(bob, dataclasses.replace(FIRST, name="other")).id != first.id


async def test_a_reused_key_is_already_exists_over_grpc(served: Served) -> None:
    stub = client_pb2_grpc.ClientServiceStub(served.channel)
    auth = served.auth(served.alice_key)

    def request(tasks: int) -> client_pb2.SubmitJobRequest:
        spec = client_pb2.JobSpec(kind="echo", params=f'{{"tasks": {tasks}}}'.encode())
        return client_pb2.SubmitJobRequest(spec=spec, idempotency_key="same")

    first = await stub.SubmitJob(request(2), metadata=auth)
    again = await stub.SubmitJob(request(2), metadata=auth)
    assert again.job.job_id == first.job.job_id
    with pytest.raises(aio.AioRpcError) as err:
        await stub.SubmitJob(request(3), metadata=auth)
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert code_of(err.value) == "IDEMPOTENCY_KEY_REUSED"
    assert "task count is 2, not 3" in (err.value.details() or "")
