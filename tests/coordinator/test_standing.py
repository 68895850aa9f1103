"""A node the coordinator holds back hears it: quarantining or banning a node ends its
session, and the Welcome of the next one says its standing and why."""

import asyncio

import grpc

from sparegrid.wire import Signer
from tests.coordinator.conftest import Served
from tests.coordinator.sessions import welcomed


async def test_a_banned_node_is_told_why_when_it_reconnects(served: Served) -> None:
    signer = Signer.generate()
    call, welcome = await welcomed(served, signer)
    assert (welcome.standing, welcome.standing_reason) == ("active", "")
    served.app.reputations.ban(welcome.node_id, "returns junk")
    async with asyncio.timeout(10):  # the session ends; the worker would reconnect
        while (message := await call.read()) is not grpc.aio.EOF:
            assert not message.HasField("assign")
    _, again = await welcomed(served, signer)
    assert (again.standing, again.standing_reason) == ("banned", "returns junk")


async def test_a_quarantined_node_hears_the_reason(served: Served) -> None:
    signer = Signer.generate()
    call, welcome = await welcomed(served, signer)
    for n in range(3):
        served.app.reputations.invalid(welcome.node_id, f"outvoted on task {n}")
    async with asyncio.timeout(10):
        while await call.read() is not grpc.aio.EOF:
            pass
    _, again = await welcomed(served, signer)
    assert again.standing == "quarantined"
    assert (
        "3 invalid results" in again.standing_reason
        and "outvoted on task 2" in again.standing_reason
    )
