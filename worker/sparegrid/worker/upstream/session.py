"""One session with the coordinator: the channel, the handshake and the stream's loops.

`connect` dials, says Hello, answers the Challenge and returns a Session once Welcome
arrives. `Session.serve` then runs the stream: a writer that sends what `post` queues, a
reader that hands each message on, and whatever loops the caller adds (heartbeats, the
outbox sender); it returns when any of them ends and raises what ended it.
"""

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Coroutine
from typing import Any

import grpc
import grpc.aio

from sparegrid.v1 import worker_pb2, worker_pb2_grpc
from sparegrid.wire import REGISTER_TAG, Signer
from sparegrid.wire.metadata import retry_after_seconds
from sparegrid.wire.targets import grpc_target
from sparegrid.wire.tls import client_credentials_roots
from sparegrid.worker.config import MAX_MESSAGE_BYTES, WorkerConfig
from sparegrid.worker.errors import SessionError
from sparegrid.worker.upstream.blobs import BlobClient

_log = logging.getLogger("sparegrid.worker.upstream.session")
HANDSHAKE_TIMEOUT = 30.0
MAX_RETRY_HINT = 60.0  # the most of a coordinator's retry hint a worker obeys (seconds)
# A link that goes silent (a router off the network, a coordinator's machine gone) ends no
# TCP connection, and the coordinator answers no heartbeat: without pings of its own a
# worker kept writing into the dead connection for as long as TCP retries (many minutes),
# never reaching a standby. With them it drops the session within about 20 s and dials
# again. A ping unanswered for 10 s ends the connection (gRPC's default waits a minute for
# the flow-control pings it sends itself). Coordinators permit a ping every 10 s (every
# 5 s since this came in: server.py).
KEEPALIVE_OPTIONS = [
    ("grpc.keepalive_time_ms", 11_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.ping_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),  # an idle worker sends data once a minute
]
_CLOSE = object()  # queued to half-close the stream after everything before it is sent

OnMessage = Callable[[worker_pb2.CoordinatorMessage], None]


def retry_after(error: grpc.aio.AioRpcError) -> float | None:
    """The seconds a coordinator that refused the session (UNAVAILABLE, busy admitting a
    storm of registrations) asked the worker to wait before trying again, if it did."""
    if error.code() != grpc.StatusCode.UNAVAILABLE:
        return None
    return retry_after_seconds(error.trailing_metadata())


def reconnect_delay(error: BaseException | None, backoff_delay: float, rng: random.Random) -> float:
    """How long to wait before the next session: the coordinator's retry hint (at most
    MAX_RETRY_HINT: a coordinator misled by a flood must not park its workers for long),
    stretched by up to a half at random so that refused workers do not all return at
    once, else the jittered backoff's delay."""
    hint = retry_after(error) if isinstance(error, grpc.aio.AioRpcError) else None
    if hint is None:
        return backoff_delay
    return min(hint, MAX_RETRY_HINT) * (1 + rng.random() / 2)


def open_channel(config: WorkerConfig) -> grpc.aio.Channel:
    options = [
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        *KEEPALIVE_OPTIONS,
    ]
    if config.tls_ca is None and not config.tls:
        return grpc.aio.insecure_channel(grpc_target(config.coordinator), options=options)
    roots = client_credentials_roots(config.tls_ca)  # the CA file, else the system's roots
    credentials = grpc.ssl_channel_credentials(root_certificates=roots)
    return grpc.aio.secure_channel(grpc_target(config.coordinator), credentials, options=options)


Call = grpc.aio.StreamStreamCall[worker_pb2.WorkerMessage, worker_pb2.CoordinatorMessage]


async def _read(call: Call, expected: str) -> worker_pb2.CoordinatorMessage:
    async with asyncio.timeout(HANDSHAKE_TIMEOUT):
        message = await call.read()
    if message is grpc.aio.EOF:
        raise SessionError(f"the coordinator closed the stream while the worker awaited {expected}")
    assert isinstance(message, worker_pb2.CoordinatorMessage)
    if message.WhichOneof("body") != expected:
        raise SessionError(f"expected {expected}, got {message.WhichOneof('body')}")
    return message


async def connect(
    channel: grpc.aio.Channel,
    hello: worker_pb2.WorkerMessage,
    signer: Signer,
    owner_key: str = "",
) -> "Session":
    """Hello, Challenge, signed answer, Welcome; raises AioRpcError or SessionError.

    With `owner_key` (an account's API key) the coordinator records that account as the
    node's owner: replicas of one task never go to two nodes of one owner."""
    metadata = (("authorization", f"Bearer {owner_key}"),) if owner_key else None
    call: Call = worker_pb2_grpc.WorkerServiceStub(channel).Session(metadata=metadata)
    try:
        await call.write(hello)
        challenge = (await _read(call, "challenge")).challenge
        signed = challenge.nonce + challenge.session_id.encode("utf-8")
        answer = worker_pb2.ChallengeResponse(signature=signer.sign(REGISTER_TAG, signed))
        await call.write(worker_pb2.WorkerMessage(challenge_response=answer))
        welcome = (await _read(call, "welcome")).welcome
    except BaseException:
        call.cancel()
        raise
    return Session(call, welcome, BlobClient(channel, welcome.session_token))


class Session:
    def __init__(self, call: Call, welcome: worker_pb2.Welcome, blobs: BlobClient) -> None:
        self.welcome = welcome
        self.blobs = blobs
        self._call = call
        self._outgoing: asyncio.Queue[object] = asyncio.Queue()
        self._half_closed = False
        self._ended = asyncio.Event()

    def post(self, message: worker_pb2.WorkerMessage) -> None:
        """Queues a message; messages go out in the order they were posted."""
        if not self._half_closed:
            self._outgoing.put_nowait(message)

    async def _write_loop(self) -> None:
        while True:
            message = await self._outgoing.get()
            if message is _CLOSE:
                await self._call.done_writing()
                continue
            assert isinstance(message, worker_pb2.WorkerMessage)
            await self._call.write(message)

    async def _read_loop(self, on_message: OnMessage) -> None:
        try:
            while (message := await self._call.read()) is not grpc.aio.EOF:
                assert isinstance(message, worker_pb2.CoordinatorMessage)
                on_message(message)
        finally:
            self._ended.set()

    async def serve(self, on_message: OnMessage, *loops: Coroutine[Any, Any, None]) -> None:
        tasks = [
            asyncio.create_task(self._write_loop()),
            asyncio.create_task(self._read_loop(on_message)),
            *(asyncio.create_task(loop) for loop in loops),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._call.cancel()
        for task in done:
            error = None if task.cancelled() else task.exception()
            if error is not None:
                raise error

    async def close(self, timeout: float) -> None:
        """Sends what is queued, half-closes the stream and waits for the coordinator's end."""
        self._outgoing.put_nowait(_CLOSE)
        self._half_closed = True
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._ended.wait()
