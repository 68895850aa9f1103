"""How often one account may call the client methods, over real gRPC: every call is
served on the coordinator's one event loop, which also settles the workers' results, so
one API key looping GetAccount or ListJobs (a page of 1,000) took it from everyone else.
Past its account's rate a call is refused before anything is done (RESOURCE_EXHAUSTED,
TOO_MANY_CALLS, told when to try again), other accounts are served as before, admins are
not counted, and the SDK waits for its turn instead of failing."""

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc import aio

from sparegrid.coordinator.services.calls import CallConfig
from sparegrid.coordinator.settings import Settings
from sparegrid.sdk import Client
from sparegrid.sdk.aio import AsyncClient
from sparegrid.v1 import admin_pb2, admin_pb2_grpc, client_pb2, client_pb2_grpc
from sparegrid.wire.metadata import retry_after_seconds
from tests.coordinator.conftest import Served, code_of, served_with, store_kinds

RATE, BURST = 5.0, 12


@pytest.fixture(params=store_kinds())
async def limited(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Served]:
    """A coordinator letting each account make BURST client calls at once, then RATE a
    second."""
    settings = Settings(data_dir=tmp_path, calls=CallConfig(rate=RATE, burst=BURST))
    async with served_with(request.param, tmp_path, settings) as served:
        yield served


async def _refused(call: "asyncio.Future[object] | object") -> aio.AioRpcError:
    with pytest.raises(aio.AioRpcError) as err:
        await call  # type: ignore[misc]
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.value
    assert code_of(err.value) == "TOO_MANY_CALLS"
    return err.value


async def test_a_key_looping_calls_is_refused_while_another_account_is_served(
    limited: Served,
) -> None:
    stub = client_pb2_grpc.ClientServiceStub(limited.channel)
    alice, bob = limited.auth(limited.alice_key), limited.auth(limited.bob_key)
    request = client_pb2.GetAccountRequest()
    for _ in range(BURST):  # far faster than RATE a second
        assert (await stub.GetAccount(request, metadata=alice)).name == "alice"
    error = await _refused(stub.GetAccount(request, metadata=alice))
    assert "account 'alice' is calling faster than the 5 calls a second" in (error.details() or "")
    wait = retry_after_seconds(error.trailing_metadata())  # type: ignore[arg-type]
    assert wait is not None and 0 < wait <= 1 / RATE  # when one more token is there
    await _refused(stub.GetJob(client_pb2.GetJobRequest(job_id="x"), metadata=alice))

    assert (await stub.GetAccount(request, metadata=bob)).name == "bob"  # not held back
    # a page of 1,000 jobs costs 11 calls: bob's burst holds one such page, not two
    await stub.ListJobs(client_pb2.ListJobsRequest(limit=1000), metadata=bob)
    await _refused(stub.ListJobs(client_pb2.ListJobsRequest(limit=1000), metadata=bob))

    await asyncio.sleep(wait)  # alice's turn comes back at the rate
    assert (await stub.GetAccount(request, metadata=alice)).name == "alice"
    assert limited.app.calls.refused == 3


async def test_an_admin_is_not_held_back(limited: Served) -> None:
    admin = limited.auth(limited.admin_key)
    client = client_pb2_grpc.ClientServiceStub(limited.channel)
    operator = admin_pb2_grpc.AdminServiceStub(limited.channel)
    for _ in range(5 * BURST):
        await client.GetAccount(client_pb2.GetAccountRequest(), metadata=admin)
        await client.ListJobs(client_pb2.ListJobsRequest(limit=1000), metadata=admin)
        await operator.ListAccounts(admin_pb2.ListAccountsRequest(), metadata=admin)
    assert limited.app.calls.refused == 0


async def test_the_sdk_slows_down_to_its_accounts_rate_rather_than_failing(
    limited: Served,
) -> None:
    """A program calling faster than its account may, at once and one after another: each
    call waits for the turn the coordinator names, and every one succeeds."""
    calls = 3 * BURST
    began = time.monotonic()
    async with AsyncClient(limited.address, limited.alice_key) as client:
        accounts = await asyncio.gather(*(client.account() for _ in range(calls)))
    assert {a.name for a in accounts} == {"alice"}
    assert time.monotonic() - began >= (calls - BURST) / RATE * 0.9  # at the rate, about
    refused = limited.app.calls.refused
    assert refused > 0

    def sequential() -> list[str]:
        with Client(limited.address, limited.bob_key) as client:
            return [client.account().name for _ in range(BURST + 10)]

    assert await asyncio.to_thread(sequential) == ["bob"] * (BURST + 10)
    assert limited.app.calls.refused > refused
