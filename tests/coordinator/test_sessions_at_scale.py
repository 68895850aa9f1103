"""Idle sessions and registration storms over real gRPC: heartbeats write nothing until the
bulk write (and survive a clean restart), a burst past the admission rate waits its turn
when it comes soon and is refused with a retry hint past that, and every worker that
honours the hint gets in."""

import asyncio
import functools
import random
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc import aio

from sparegrid.coordinator.app import App
from sparegrid.coordinator.clock import FakeClock
from sparegrid.coordinator.server import build_server
from sparegrid.coordinator.services.admission import AdmissionConfig
from sparegrid.coordinator.settings import Settings
from sparegrid.coordinator.store.sqlite import SqliteStore
from sparegrid.v1 import admin_pb2, admin_pb2_grpc, common_pb2, worker_pb2, worker_pb2_grpc
from sparegrid.wire import Signer
from sparegrid.worker.upstream.session import Session, connect, reconnect_delay, retry_after
from tests.coordinator.conftest import code_of


@dataclass
class Coordinator:
    app: App
    server: aio.Server
    channel: aio.Channel

    async def stop(self) -> None:
        await self.channel.close()
        await self.server.stop(grace=None)
        await self.app.stop()


async def serve(tmp_path: Path, clock: FakeClock | None = None, **settings: object) -> Coordinator:
    store = SqliteStore(tmp_path / "coordinator.db")
    app = App(store, Settings(data_dir=tmp_path, **settings), clock=clock)  # type: ignore[arg-type]
    server, port = await build_server(app, "127.0.0.1:0")
    app.start()
    await server.start()
    return Coordinator(app, server, aio.insecure_channel(f"127.0.0.1:{port}"))


def hello(signer: Signer) -> worker_pb2.WorkerMessage:
    return worker_pb2.WorkerMessage(
        hello=worker_pb2.Hello(
            public_key=signer.public_key,
            node_name="idle",
            devices=[common_pb2.Device(index=0, kind=common_pb2.DEVICE_KIND_CPU, name="cpu")],
            executors=[worker_pb2.ExecutorInfo(name="echo", version="1")],
        )
    )


def heard(app: App, node_id: str, when: float) -> bool:
    return app.seen.get(node_id) == when


async def until(condition, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_heartbeats_write_nothing_until_the_bulk_write_and_survive_a_clean_restart(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    coordinator = await serve(tmp_path, clock=clock)
    app = coordinator.app
    signer = Signer.generate()
    session: Session = await connect(coordinator.channel, hello(signer), signer)
    registered = clock.now()
    node_id = signer.node_id
    writes = 0
    touch = app.store.touch_nodes

    def counted(seen):  # type: ignore[no-untyped-def]
        nonlocal writes
        writes += 1
        touch(seen)

    app.store.touch_nodes = counted  # type: ignore[method-assign]
    scanned = app.scheduler.scanned

    async def beat() -> None:
        for _ in range(5):
            clock.advance(10)
            session.post(worker_pb2.WorkerMessage(heartbeat=worker_pb2.Heartbeat()))
            await until(functools.partial(heard, app, node_id, clock.now()))

    await session.serve(lambda message: None, beat())
    last = clock.now()
    assert last == registered + 50
    # five beats: no write of the node row, no dispatch pass over the session
    assert writes == 0
    assert app.store.get_node(node_id).last_seen == registered
    assert app.scheduler.scanned == scanned
    # the admin's view shows the beat held in memory
    _, admin_key = app.accounts.create("root", 0, is_admin=True)
    stub = admin_pb2_grpc.AdminServiceStub(coordinator.channel)
    listed = await stub.ListNodes(
        admin_pb2.ListNodesRequest(), metadata=(("authorization", f"Bearer {admin_key}"),)
    )
    (shown,) = [n for n in listed.nodes if n.node_id == node_id]
    assert shown.last_seen.seconds == int(last)
    await coordinator.stop()  # a clean stop writes what is in memory, in one statement
    assert writes == 1
    reopened = SqliteStore(tmp_path / "coordinator.db")
    try:
        assert reopened.get_node(node_id).last_seen == last
    finally:
        reopened.close()


async def test_the_bulk_write_moves_last_seen_forward_only(tmp_path: Path) -> None:
    clock = FakeClock()
    coordinator = await serve(tmp_path, clock=clock)
    try:
        app = coordinator.app
        signer = Signer.generate()
        session = await connect(coordinator.channel, hello(signer), signer)
        node = app.store.get_node(signer.node_id)
        app.seen[signer.node_id] = node.last_seen - 100  # stale: never moves it back
        assert app.write_seen() == 1
        assert app.store.get_node(signer.node_id).last_seen == node.last_seen
        assert app.seen == {}
        session._call.cancel()
    finally:
        await coordinator.stop()


async def test_a_registration_burst_is_refused_with_a_hint_and_all_get_in(
    tmp_path: Path,
) -> None:
    admission = AdmissionConfig(rate=5.0, burst=4, hold=0.0, min_wait=0.2)
    coordinator = await serve(tmp_path, admission=admission)
    workers, refusals = 24, []
    rng = random.Random(7)

    async def register(signer: Signer) -> Session:
        while True:
            try:
                return await connect(coordinator.channel, hello(signer), signer)
            except grpc.aio.AioRpcError as exc:
                hint = retry_after(exc)
                refusals.append((exc.code(), code_of(exc), hint, exc.details()))
                delay = reconnect_delay(exc, 99.0, rng)  # 99: the backoff is not used
                assert hint is not None and hint <= delay <= hint * 1.5
                await asyncio.sleep(delay)

    try:
        started = time.monotonic()
        sessions = await asyncio.wait_for(
            asyncio.gather(*(register(Signer.generate()) for _ in range(workers))), 20
        )
        took = time.monotonic() - started
        assert len(coordinator.app.scheduler.sessions) == workers
        assert len(refusals) >= workers // 2  # only the burst gets in at once
        for code, stable, hint, details in refusals:
            assert code == grpc.StatusCode.UNAVAILABLE and stable == "REGISTRATION_BUSY"
            assert hint is not None and hint >= admission.min_wait
            assert "retry in" in details
        # admitted at about the rate: 20 more at 5 a second take about 4 s
        assert took >= (workers - admission.burst) / admission.rate * 0.5
        assert coordinator.app.admission.refused == len(refusals)
        for session in sessions:
            session._call.cancel()
    finally:
        await coordinator.stop()


async def test_a_refusal_costs_no_signature_check_and_no_row(tmp_path: Path) -> None:
    coordinator = await serve(tmp_path, admission=AdmissionConfig(rate=1.0, burst=1, hold=0.0))
    try:
        first, second = Signer.generate(), Signer.generate()
        session = await connect(coordinator.channel, hello(first), first)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await connect(coordinator.channel, hello(second), second)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert retry_after(refused.value) is not None
        assert coordinator.app.store.get_node(second.node_id) is None  # nothing recorded
        assert second.node_id not in coordinator.app.scheduler.sessions
        session._call.cancel()
    finally:
        await coordinator.stop()


async def test_a_malformed_hello_is_refused_at_once_and_takes_no_turn(tmp_path: Path) -> None:
    """Garbage (no key, no device) hears INVALID_ARGUMENT / BAD_HELLO saying what is wrong,
    and leaves the one token of a rate of 1 a second to the worker after it."""
    coordinator = await serve(tmp_path, admission=AdmissionConfig(rate=1.0, burst=1, hold=0.0))
    stub = worker_pb2_grpc.WorkerServiceStub(coordinator.channel)
    signer = Signer.generate()
    no_device = hello(signer)
    del no_device.hello.devices[:]
    bad = [worker_pb2.WorkerMessage(hello=worker_pb2.Hello(public_key=b"x"))] * 20 + [no_device]
    try:
        details = []
        for message in bad:
            call = stub.Session()
            await call.write(message)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call.read()
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert code_of(refused.value) == "BAD_HELLO"
            assert retry_after(refused.value) is None
            details.append(refused.value.details() or "")
        assert "public key is 32 bytes" in details[0] and "1 to 64 devices" in details[-1]
        session = await connect(coordinator.channel, hello(signer), signer)  # not refused
        admission = coordinator.app.admission
        assert (admission.admitted, admission.refused) == (1, 0)
        session._call.cancel()
    finally:
        await coordinator.stop()


async def test_a_burst_whose_turns_come_soon_waits_for_them_and_none_is_refused(
    tmp_path: Path,
) -> None:
    admission = AdmissionConfig(rate=10.0, burst=4, hold=2.0)
    coordinator = await serve(tmp_path, admission=admission)
    workers = 16
    try:
        started = time.monotonic()
        sessions = await asyncio.wait_for(
            asyncio.gather(
                *(
                    connect(coordinator.channel, hello(signer), signer)
                    for signer in (Signer.generate() for _ in range(workers))
                )
            ),
            20,
        )
        took = time.monotonic() - started
        app = coordinator.app
        assert len(app.scheduler.sessions) == workers
        assert app.admission.refused == 0  # every one got in on its first try
        assert app.admission.waited == workers - admission.burst
        # the twelve past the burst were let in at about the rate: the last after ~1.2 s
        assert took >= (workers - admission.burst) / admission.rate * 0.8
        for session in sessions:
            session._call.cancel()
    finally:
        await coordinator.stop()


async def test_welcome_asks_for_a_heartbeat_every_10_s_and_every_60_s_when_idle(
    tmp_path: Path,
) -> None:
    coordinator = await serve(tmp_path)
    try:
        signer = Signer.generate()
        session = await connect(coordinator.channel, hello(signer), signer)
        assert session.welcome.heartbeat_interval.ToTimedelta().total_seconds() == 10.0
        # a node holding no task: a heartbeat a minute (it renews nothing)
        assert session.welcome.idle_heartbeat_interval.ToTimedelta().total_seconds() == 60.0
        assert session.welcome.lease_duration.ToTimedelta().total_seconds() == 30.0
        session._call.cancel()
    finally:
        await coordinator.stop()


def test_a_worker_without_a_hint_keeps_its_backoff() -> None:
    assert reconnect_delay(None, 3.0, random.Random(1)) == 3.0
    assert reconnect_delay(OSError("reset"), 2.5, random.Random(1)) == 2.5
