"""Worker sessions without an owner account's key, held open from one address, over real
gRPC: a node key costs nothing, so one address could hold sessions by the ten thousand
(each about 50 kB of the coordinator's memory and a node row) at the 100 registrations a
second its share of admission allows. One address holds at most
`--anonymous-sessions-per-address` of them, handshakes not yet finished included; owned
nodes' sessions are not counted, and a session that ends gives its place back. (Loopback
is exempt in a running coordinator; these tests count it.)"""

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc import aio

from sparegrid.coordinator.services.admission import AdmissionConfig
from sparegrid.coordinator.settings import Settings
from sparegrid.v1 import worker_pb2_grpc
from sparegrid.wire import Signer
from sparegrid.wire.metadata import retry_after_seconds
from sparegrid.worker.testing.harness import wait_until
from tests.coordinator.conftest import Served, code_of, served_with, store_kinds
from tests.coordinator.sessions import welcomed

LIMIT = 3


@pytest.fixture(params=store_kinds())
async def counted(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Served]:
    """A coordinator that counts loopback callers as it counts any other address."""
    admission = AdmissionConfig(exempt_loopback=False, anonymous_sessions=LIMIT)
    settings = Settings(data_dir=tmp_path, admission=admission)
    async with served_with(request.param, tmp_path, settings) as served:
        yield served


async def _refused(served: Served) -> aio.AioRpcError:
    with pytest.raises(aio.AioRpcError) as err:
        await welcomed(served, Signer.generate())
    return err.value


async def test_one_address_holds_a_bounded_number_of_anonymous_sessions(counted: Served) -> None:
    calls = [(await welcomed(counted, Signer.generate()))[0] for _ in range(LIMIT)]

    error = await _refused(counted)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert code_of(error) == "TOO_MANY_SESSIONS"
    details = error.details() or ""
    assert f"holds {LIMIT} worker sessions without an owner account's key" in details
    assert "SPAREGRID_OWNER_KEY" in details and "--anonymous-sessions-per-address" in details
    assert retry_after_seconds(error.trailing_metadata()) == 30.0
    assert len(counted.app.scheduler.sessions) == LIMIT  # nothing more attached

    # a node of an owner account, from the same address, is not held back
    owned, welcome = await welcomed(counted, Signer.generate(), counted.alice_key)
    assert welcome.node_id in counted.app.scheduler.sessions

    calls[0].cancel()  # a session that ends gives its place back
    for _ in range(500):
        try:
            again, _ = await welcomed(counted, Signer.generate())
            break
        except aio.AioRpcError as exc:
            assert code_of(exc) == "TOO_MANY_SESSIONS"
            await asyncio.sleep(0.01)
    else:
        raise AssertionError("still refused after a session ended")
    for call in [*calls[1:], owned, again]:
        call.cancel()


async def test_handshakes_not_finished_count_too(counted: Served) -> None:
    """Streams that never send their Hello (each lives HANDSHAKE_SECONDS) take the places."""
    stub = worker_pb2_grpc.WorkerServiceStub(counted.channel)
    silent = [stub.Session() for _ in range(LIMIT)]
    await wait_until(lambda: counted.app.admission.sessions.get("127.0.0.1") == LIMIT)
    error = await _refused(counted)
    assert code_of(error) == "TOO_MANY_SESSIONS"
    for call in silent:
        call.cancel()
    await wait_until(lambda: not counted.app.admission.sessions)
    (await welcomed(counted, Signer.generate()))[0].cancel()
