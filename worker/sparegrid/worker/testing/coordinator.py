"""A fake coordinator: a real grpc.aio server on 127.0.0.1 that speaks just enough of
WorkerService.Session and BlobService to drive a worker in tests.

Tests push Assign and Cancel messages into a FakeSession and wait for what the worker
sends back. Results and Failures are acknowledged automatically unless `ack_results` is
off. Blobs live in `blobs` (digest -> bytes); put wrong bytes there to test refusal.
"""

import asyncio
import hashlib
import os
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import grpc
import grpc.aio

from sparegrid.v1 import blob_pb2, blob_pb2_grpc, worker_pb2, worker_pb2_grpc
from sparegrid.wire import REGISTER_TAG, BadSignature, node_id_for, verify
from sparegrid.wire.codes import CODE_METADATA_KEY
from sparegrid.wire.receipt import decode_statement

CHUNK = 1 << 20
Predicate = Callable[[worker_pb2.WorkerMessage], bool]


def is_kind(kind: str) -> Predicate:
    return lambda m: m.WhichOneof("body") == kind


@dataclass
class FakeSession:
    hello: worker_pb2.Hello
    nonce: bytes
    session_id: str
    token: str
    ack_results: bool
    signature: bytes = b""
    welcome: worker_pb2.Welcome = field(default_factory=worker_pb2.Welcome)
    received: list[worker_pb2.WorkerMessage] = field(default_factory=list)
    outgoing: asyncio.Queue[worker_pb2.CoordinatorMessage | None] = field(
        default_factory=asyncio.Queue
    )
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    ended: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def node_id(self) -> str:
        return node_id_for(self.hello.public_key)

    def send(self, message: worker_pb2.CoordinatorMessage) -> None:
        self.outgoing.put_nowait(message)

    def assign(self, *assignments: worker_pb2.Assignment) -> None:
        self.send(worker_pb2.CoordinatorMessage(assign=worker_pb2.Assign(assignments=assignments)))

    def cancel(self, *attempt_ids: str, reason: str = "test") -> None:
        cancel = worker_pb2.Cancel(attempt_ids=attempt_ids, reason=reason)
        self.send(worker_pb2.CoordinatorMessage(cancel=cancel))

    def ack(self, batch_id: int) -> None:
        self.send(worker_pb2.CoordinatorMessage(result_ack=worker_pb2.ResultAck(batch_id=batch_id)))

    def of_kind(self, kind: str) -> list[worker_pb2.WorkerMessage]:
        return [m for m in self.received if m.WhichOneof("body") == kind]

    async def wait_for(
        self, predicate: Predicate, count: int = 1
    ) -> list[worker_pb2.WorkerMessage]:
        """Waits until `count` received messages match; returns them all."""
        async with self.changed:
            await self.changed.wait_for(
                lambda: len(list(filter(predicate, self.received))) >= count
            )
            return list(filter(predicate, self.received))

    async def wait_statements(self, count: int) -> list[bytes]:
        """Waits for `count` result statements in total, across Results batches."""

        def enough(_: object = None) -> bool:
            return len(self.statements()) >= count

        async with self.changed:
            await self.changed.wait_for(enough)
        return self.statements()

    def statements(self) -> list[bytes]:
        return [s for m in self.of_kind("results") for s in m.results.statements]

    def failures(self) -> list[worker_pb2.TaskFailure]:
        return [f for m in self.of_kind("failures") for f in m.failures.failures]

    async def wait_failures(self, count: int) -> list[worker_pb2.TaskFailure]:
        async with self.changed:
            await self.changed.wait_for(lambda: len(self.failures()) >= count)
        return self.failures()

    def credit(self, device: int) -> int:
        return sum(
            m.credit.count for m in self.of_kind("credit") if m.credit.device_index == device
        )

    async def record(self, message: worker_pb2.WorkerMessage) -> None:
        async with self.changed:
            self.received.append(message)
            self.changed.notify_all()
        body = message.WhichOneof("body")
        if self.ack_results and body in ("results", "failures"):
            self.ack(getattr(message, body).batch_id)


class FakeCoordinator(worker_pb2_grpc.WorkerServiceServicer, blob_pb2_grpc.BlobServiceServicer):
    def __init__(self, heartbeat_seconds: float = 5.0, ack_results: bool = True) -> None:
        self.heartbeat_seconds = heartbeat_seconds
        self.idle_heartbeat_seconds = 0.0  # 0: Welcome names none (a coordinator before it)
        self.ack_results = ack_results
        self.resume = True  # Welcome resumes every attempt the worker reports running
        self.standing = ("active", "")  # what Welcome says of the node's standing, and why
        self.credited = 0  # the node's credit in the ledger, as Welcome says it
        # every session refused after its Hello: (status, sparegrid code, message)
        self.refusal: tuple[grpc.StatusCode, str, str] | None = None
        self.blobs: dict[str, bytes] = {}
        self.uploads: list[str] = []
        self.downloads: list[tuple[str, int]] = []
        self.fail_download_after: dict[str, int] = {}  # digest -> bytes sent before UNAVAILABLE
        self.sessions: list[FakeSession] = []
        self.port = 0
        self._server: grpc.aio.Server | None = None
        self._sessions_changed = asyncio.Condition()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self, port: int = 0, tls: tuple[bytes, bytes] | None = None) -> None:
        """Serves on 127.0.0.1 (any free port by default); `tls` is (key PEM, cert PEM)."""
        server = grpc.aio.server()
        worker_pb2_grpc.add_WorkerServiceServicer_to_server(self, server)
        blob_pb2_grpc.add_BlobServiceServicer_to_server(self, server)
        address = f"127.0.0.1:{port}"
        if tls is None:
            self.port = server.add_insecure_port(address)
        else:
            self.port = server.add_secure_port(address, grpc.ssl_server_credentials([tls]))
        await server.start()
        self._server = server

    async def stop(self) -> None:
        if self._server is not None:
            for session in self.sessions:
                session.outgoing.put_nowait(None)
            await self._server.stop(grace=None)
            self._server = None

    def put_blob(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        self.blobs[digest] = data
        return digest

    async def session(self, number: int = 1) -> FakeSession:
        """The `number`th session (1-based) once the worker has been welcomed into it."""
        async with self._sessions_changed:
            await self._sessions_changed.wait_for(lambda: len(self.sessions) >= number)
        return self.sessions[number - 1]

    # -- WorkerService -------------------------------------------------------------------

    async def Session(
        self,
        request_iterator: AsyncIterator[worker_pb2.WorkerMessage],
        context: grpc.aio.ServicerContext[worker_pb2.WorkerMessage, worker_pb2.CoordinatorMessage],
    ) -> AsyncIterator[worker_pb2.CoordinatorMessage]:
        requests = aiter(request_iterator)
        first = await anext(requests)
        if self.refusal is not None:
            status, code, words = self.refusal
            context.set_trailing_metadata(((CODE_METADATA_KEY, code),))
            await context.abort(status, words)
        session = FakeSession(
            first.hello, os.urandom(32), uuid.uuid4().hex, uuid.uuid4().hex, self.ack_results
        )
        challenge = worker_pb2.Challenge(nonce=session.nonce, session_id=session.session_id)
        yield worker_pb2.CoordinatorMessage(challenge=challenge)
        answer = await anext(requests)
        session.signature = answer.challenge_response.signature
        try:
            signed = session.nonce + session.session_id.encode()
            verify(session.hello.public_key, REGISTER_TAG, signed, session.signature)
        except BadSignature as exc:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
        yield worker_pb2.CoordinatorMessage(welcome=self._welcome(session))
        reader = asyncio.create_task(self._read(session, requests))
        async with self._sessions_changed:
            self.sessions.append(session)
            self._sessions_changed.notify_all()
        try:
            while (message := await session.outgoing.get()) is not None:
                yield message
        finally:
            reader.cancel()
            session.ended.set()

    def _welcome(self, session: FakeSession) -> worker_pb2.Welcome:
        running = list(session.hello.running_attempts)
        welcome = worker_pb2.Welcome(
            node_id=session.node_id,
            session_token=session.token,
            resumed_attempts=running if self.resume else [],
            cancelled_attempts=[] if self.resume else running,
            standing=self.standing[0],
            standing_reason=self.standing[1],
            credited=self.credited,
        )
        welcome.heartbeat_interval.FromMilliseconds(int(self.heartbeat_seconds * 1000))
        if self.idle_heartbeat_seconds:
            idle = welcome.idle_heartbeat_interval
            idle.FromMilliseconds(int(self.idle_heartbeat_seconds * 1000))
        welcome.lease_duration.FromSeconds(60)
        session.welcome = welcome
        return welcome

    async def _read(
        self, session: FakeSession, requests: AsyncIterator[worker_pb2.WorkerMessage]
    ) -> None:
        async for message in requests:
            await session.record(message)
        session.outgoing.put_nowait(None)  # the worker half-closed: end the stream

    # -- BlobService ---------------------------------------------------------------------

    async def _authorize(self, context: grpc.aio.ServicerContext[object, object]) -> None:
        metadata = dict(context.invocation_metadata() or ())
        tokens = {f"Session {s.token}" for s in self.sessions}
        if metadata.get("authorization") not in tokens:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "no valid session token")

    async def DownloadBlob(
        self,
        request: blob_pb2.DownloadBlobRequest,
        context: grpc.aio.ServicerContext[object, object],
    ) -> AsyncIterator[blob_pb2.DownloadBlobResponse]:
        await self._authorize(context)
        self.downloads.append((request.digest, request.offset))
        data = self.blobs.get(request.digest)
        if data is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no blob {request.digest}")
            return
        fail_after = self.fail_download_after.pop(request.digest, None)
        sent = 0
        for start in range(request.offset, len(data), CHUNK):
            if fail_after is not None and sent >= fail_after:
                await context.abort(grpc.StatusCode.UNAVAILABLE, "injected failure")
            chunk = data[start : start + CHUNK]
            size = len(data) if start == request.offset else 0
            yield blob_pb2.DownloadBlobResponse(size=size, chunk=chunk)
            sent += len(chunk)

    async def StatBlob(
        self, request: blob_pb2.StatBlobRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> blob_pb2.StatBlobResponse:
        await self._authorize(context)
        data = self.blobs.get(request.digest)
        return blob_pb2.StatBlobResponse(exists=data is not None, size=len(data or b""))

    async def UploadBlob(
        self,
        request_iterator: AsyncIterator[blob_pb2.UploadBlobRequest],
        context: grpc.aio.ServicerContext[object, object],
    ) -> blob_pb2.UploadBlobResponse:
        await self._authorize(context)
        parts = [r async for r in request_iterator]
        header = parts[0].header
        data = b"".join(p.chunk for p in parts[1:])
        if hashlib.sha256(data).hexdigest() != header.digest or header.offset != 0:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "digest does not match")
        self.blobs[header.digest] = data
        self.uploads.append(header.digest)
        return blob_pb2.UploadBlobResponse(digest=header.digest, size=len(data), received=len(data))


def statement_attempts(statements: list[bytes]) -> list[str]:
    return [decode_statement(s).attempt_id for s in statements]
