"""A real coordinator for fuzzing: SQLite, grpc.aio on 127.0.0.1:0, on an event loop of its
own thread, so that fuzz targets (hypothesis examples, atheris runs) call it synchronously.

`call` sends one request of any RPC and returns the status it ended with; a status that
means the server broke (INTERNAL, UNKNOWN) is for the caller to report. Seeded with what
requests may name: accounts, a job, a blob, a node.
"""

import asyncio
import contextlib
import hashlib
import json
import queue
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.message import DecodeError, Message
from hypothesis import strategies as st

from sparegrid.coordinator.app import App
from sparegrid.coordinator.cli import ensure_admin
from sparegrid.coordinator.server import build_server
from sparegrid.coordinator.services.calls import CallConfig
from sparegrid.coordinator.settings import Settings
from sparegrid.coordinator.store.sqlite import SqliteStore
from sparegrid.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    blob_pb2,
    blob_pb2_grpc,
    client_pb2,
    client_pb2_grpc,
    common_pb2,
    worker_pb2,
    worker_pb2_grpc,
)
from sparegrid.wire import REGISTER_TAG, Signer
from sparegrid.wire.receipt import sign_batch
from tests.fuzz.protos import messages

# statuses that mean the server broke rather than refused
BROKEN = frozenset({grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN})
TIMEOUT = 10.0  # a call that takes longer is a hang, reported as DEADLINE_EXCEEDED
STREAM_TIMEOUT = 0.3  # WatchJob follows a job until it ends: cut it short


@dataclass(frozen=True)
class Rpc:
    service: str
    method: str
    request: type[Message]
    client_streaming: bool
    server_streaming: bool


def rpcs() -> list[Rpc]:
    """Every RPC of the four services, with its request type."""
    from google.protobuf import message_factory

    found = []
    for module in (client_pb2, admin_pb2, blob_pb2, worker_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            for m in service.methods:
                request = message_factory.GetMessageClass(m.input_type)
                found.append(
                    Rpc(service.name, m.name, request, m.client_streaming, m.server_streaming)
                )
    return found


@dataclass
class Coordinator:
    root: Path
    address: str = ""
    keys: dict[str, str] = field(default_factory=dict)  # account name -> API key
    known: list[str] = field(default_factory=list)  # ids a request may name
    app: App | None = None
    _loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)
    _server: Any = None

    def start(self) -> "Coordinator":
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(60)
        self.channel = grpc.insecure_channel(
            self.address, options=[("grpc.max_send_message_length", 64 << 20)]
        )
        self.stubs: dict[str, Any] = {
            "ClientService": client_pb2_grpc.ClientServiceStub(self.channel),
            "AdminService": admin_pb2_grpc.AdminServiceStub(self.channel),
            "BlobService": blob_pb2_grpc.BlobServiceStub(self.channel),
            "WorkerService": worker_pb2_grpc.WorkerServiceStub(self.channel),
        }
        self._seed()
        return self

    async def _start(self) -> None:
        store = SqliteStore(self.root / "coordinator.db", synchronous="NORMAL")
        # no limit on how often an account calls: a fuzz run makes thousands a second
        calls = CallConfig(rate=0)
        self.app = App(store, Settings(data_dir=self.root, max_blob_size=1 << 20, calls=calls))
        self.keys["admin"] = ensure_admin(self.app, self.root).read_text().strip()
        for name, credit in (("alice", 10_000), ("bob", 0)):
            self.keys[name] = self.app.accounts.create(name, credit)[1]
        self._server, port = await build_server(self.app, "127.0.0.1:0")
        self.app.start()
        await self._server.start()
        self.address = f"127.0.0.1:{port}"

    def _seed(self) -> None:
        data = b"sparegrid fuzz input"
        digest = hashlib.sha256(data).hexdigest()
        upload = iter(
            [
                blob_pb2.UploadBlobRequest(
                    header=blob_pb2.BlobHeader(digest=digest, size=len(data))
                ),
                blob_pb2.UploadBlobRequest(chunk=data),
            ]
        )
        self.stubs["BlobService"].UploadBlob(upload, metadata=self.auth("alice"), timeout=TIMEOUT)
        spec = client_pb2.JobSpec(kind="echo", params=json.dumps({"tasks": 3}).encode())
        job = self.stubs["ClientService"].SubmitJob(
            client_pb2.SubmitJobRequest(spec=spec), metadata=self.auth("alice"), timeout=TIMEOUT
        )
        job_id = job.job.job_id
        node = Signer.generate()
        self.known += [job_id, f"{job_id}-0", digest, node.node_id, "alice", "bob", "admin"]
        self.known += ["echo", "checksum", "inference", "render", "cpu", "cuda", "5.0"]

    def stop(self) -> None:
        self.channel.close()

        async def stop() -> None:
            await self._server.stop(grace=None)
            assert self.app is not None
            await self.app.stop()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(60)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def auth(self, who: str) -> tuple[tuple[str, str], ...]:
        """Call metadata: an account's key, a bad key, or nothing."""
        if who == "none":
            return ()
        key = self.keys.get(who, "sg_not_a_key")
        return (("authorization", f"Bearer {key}"),)

    def call(self, rpc: Rpc, requests: list[Message], who: str) -> grpc.StatusCode:
        """Sends the requests (the first alone for a unary call) as `who`; the status. A
        refusal without its stable code (trailer `sparegrid-code`) is reported as UNKNOWN:
        every refusal a caller can cause carries one."""
        method = getattr(self.stubs[rpc.service], rpc.method)
        timeout = STREAM_TIMEOUT if rpc.server_streaming else TIMEOUT
        try:
            if rpc.client_streaming:
                reply = method(iter(requests), metadata=self.auth(who), timeout=timeout)
            else:
                reply = method(requests[0], metadata=self.auth(who), timeout=timeout)
            if rpc.server_streaming:
                for _ in reply:
                    pass
        except grpc.RpcError as exc:
            return _checked(exc)
        return grpc.StatusCode.OK

    def session(
        self,
        messages: list[worker_pb2.WorkerMessage],
        hello: worker_pb2.Hello | None = None,
        answer: bool = False,
    ) -> grpc.StatusCode:
        """A worker session that registers properly (unless `hello` replaces its Hello),
        then sends `messages`; Results are signed with the node's key, so their statements
        are read, not refused at the signature. With `answer`, the node first takes a task
        of a fresh job, and the statements of its Results name that real lease: the
        verification, settlement and ledger code runs on what the fuzzer sends. The status
        the session ended with."""
        signer = Signer.generate()
        if hello is None:
            hello = worker_pb2.Hello(
                public_key=signer.public_key,
                node_name="fuzz",
                devices=[common_pb2.Device(index=0, kind=common_pb2.DEVICE_KIND_CPU, name="cpu")],
                executors=[worker_pb2.ExecutorInfo(name="echo", version="1")],
            )
        if answer:
            self._submit_echo()
        challenges: queue.Queue[worker_pb2.Challenge | None] = queue.Queue()
        assigned: queue.Queue[worker_pb2.Assignment | None] = queue.Queue()

        def requests() -> Iterator[worker_pb2.WorkerMessage]:
            yield worker_pb2.WorkerMessage(hello=hello)
            challenge = challenges.get(timeout=TIMEOUT)
            if challenge is None:
                return
            signed = challenge.nonce + challenge.session_id.encode()
            signature = signer.sign(REGISTER_TAG, signed)
            yield worker_pb2.WorkerMessage(
                challenge_response=worker_pb2.ChallengeResponse(signature=signature)
            )
            leases: list[worker_pb2.Assignment] = []
            if answer:
                yield worker_pb2.WorkerMessage(credit=worker_pb2.Credit(device_index=0, count=2))
                with contextlib.suppress(queue.Empty):
                    lease = assigned.get(timeout=TIMEOUT)
                    if lease is not None:
                        leases.append(lease)
            for message in messages:
                if message.HasField("results"):
                    message = _signed(message, signer, leases)
                yield message

        try:
            call = self.stubs["WorkerService"].Session(requests(), timeout=TIMEOUT)
            for reply in call:
                if reply.HasField("challenge"):
                    challenges.put(reply.challenge)
                for lease in reply.assign.assignments:
                    assigned.put(lease)
        except grpc.RpcError as exc:
            return _checked(exc)
        finally:
            challenges.put(None)
            assigned.put(None)
        return grpc.StatusCode.OK

    def _submit_echo(self) -> None:
        spec = client_pb2.JobSpec(kind="echo", params=b'{"tasks": 2, "data": "fuzz"}')
        stub = self.stubs["ClientService"]
        try:
            stub.SubmitJob(
                client_pb2.SubmitJobRequest(spec=spec), metadata=self.auth("alice"), timeout=TIMEOUT
            )
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.FAILED_PRECONDITION:  # out of credit: grant it
                raise
            self.stubs["AdminService"].GrantCredit(
                admin_pb2.GrantCreditRequest(name="alice", amount=100_000),
                metadata=self.auth("admin"),
                timeout=TIMEOUT,
            )


def session_messages(known: list[str]) -> st.SearchStrategy[worker_pb2.WorkerMessage]:
    """Mostly messages a registered node sends (credit, heartbeats, results, failures,
    drain) with fuzzed contents; sometimes any message at all."""
    statements = st.lists(
        st.one_of(
            messages(common_pb2.ResultStatement.DESCRIPTOR, known).map(
                lambda m: m.SerializeToString()
            ),
            st.binary(max_size=48),
        ),
        max_size=3,
    )
    results = st.builds(
        worker_pb2.Results,
        batch_id=st.integers(0, 2**64 - 1),
        statements=statements,
        inline_outputs=st.dictionaries(
            st.one_of(st.sampled_from(known), st.text(max_size=70)),
            st.binary(max_size=64),
            max_size=2,
        ),
    )
    return st.one_of(
        results.map(lambda r: worker_pb2.WorkerMessage(results=r)),
        results.map(lambda r: worker_pb2.WorkerMessage(results=r)),
        messages(worker_pb2.Credit.DESCRIPTOR).map(lambda c: worker_pb2.WorkerMessage(credit=c)),
        messages(worker_pb2.Failures.DESCRIPTOR, known).map(
            lambda f: worker_pb2.WorkerMessage(failures=f)
        ),
        st.just(worker_pb2.WorkerMessage(heartbeat=worker_pb2.Heartbeat())),
        st.just(worker_pb2.WorkerMessage(drain=worker_pb2.Drain())),
        messages(worker_pb2.WorkerMessage.DESCRIPTOR, known),
    )


def _checked(exc: grpc.RpcError) -> grpc.StatusCode:
    status: grpc.StatusCode = exc.code()  # type: ignore[attr-defined]
    if status == grpc.StatusCode.DEADLINE_EXCEEDED:
        return status  # a stream cut short by the caller's deadline
    trailers = dict(exc.trailing_metadata() or ())  # type: ignore[attr-defined]
    if not trailers.get("sparegrid-code"):
        return grpc.StatusCode.UNKNOWN
    return status


def _signed(
    message: worker_pb2.WorkerMessage, signer: Signer, leases: list[worker_pb2.Assignment]
) -> worker_pb2.WorkerMessage:
    """The message with its first statements made to name real leases (their outputs
    as fuzzed), and the batch signed with the node's key."""
    signed = worker_pb2.WorkerMessage()
    signed.CopyFrom(message)
    statements = list(signed.results.statements)
    for i, lease in enumerate(leases[: len(statements)]):
        statement = common_pb2.ResultStatement()
        with contextlib.suppress(DecodeError):
            statement.ParseFromString(statements[i])
        statement.job_id, statement.task_id = lease.job_id, lease.task_id
        statement.attempt_id, statement.node_id = lease.attempt_id, signer.node_id
        del statement.inputs[:]
        statement.inputs.extend(lease.inputs)
        statements[i] = statement.SerializeToString()
    del signed.results.statements[:]
    signed.results.statements.extend(statements)
    if statements:
        signed.results.signature = sign_batch(signer, statements)
    return signed


def started() -> tuple[Coordinator, tempfile.TemporaryDirectory[str]]:
    tmp = tempfile.TemporaryDirectory(prefix="sparegrid-fuzz-")
    return Coordinator(Path(tmp.name)).start(), tmp


def bases(server: Coordinator) -> dict[str, Message]:
    """A valid request per RPC that has one worth starting from, so that fuzzing gets
    past the first check (most random specs are refused for their kind alone)."""
    job, digest = server.known[0], server.known[2]
    return {
        "SubmitJob": client_pb2.SubmitJobRequest(
            spec=client_pb2.JobSpec(kind="echo", params=b'{"tasks": 2, "data": "x"}'),
            idempotency_key="fuzz",
        ),
        "GetJob": client_pb2.GetJobRequest(job_id=job),
        "CancelJob": client_pb2.CancelJobRequest(job_id=job),
        "RetryJob": client_pb2.RetryJobRequest(job_id=job),
        "WatchJob": client_pb2.WatchJobRequest(job_id=job),
        "GetJobResults": client_pb2.GetJobResultsRequest(job_id=job, page_size=2),
        "Stake": client_pb2.StakeRequest(amount=1),
        "GrantCredit": admin_pb2.GrantCreditRequest(name="bob", amount=1),
        "CreateAccount": admin_pb2.CreateAccountRequest(name="carol"),
        "StatBlob": blob_pb2.StatBlobRequest(digest=digest),
        "DownloadBlob": blob_pb2.DownloadBlobRequest(digest=digest),
    }


def request_lists(server: Coordinator, rpc: Rpc) -> st.SearchStrategy[list[Message]]:
    """Requests for one call of the RPC (a list: a client stream sends them all)."""
    request = messages(rpc.request.DESCRIPTOR, server.known)
    base = bases(server).get(rpc.method)
    if base is not None:
        request = st.one_of(request, messages(rpc.request.DESCRIPTOR, server.known, base=base))
    return st.lists(request, min_size=1, max_size=4)


def session_sequences(server: Coordinator) -> st.SearchStrategy[list[worker_pb2.WorkerMessage]]:
    return st.lists(session_messages(server.known), min_size=1, max_size=6)


CALLERS = st.sampled_from(["alice", "bob", "admin", "stranger", "none"])
