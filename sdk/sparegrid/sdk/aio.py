"""The asyncio clients, on grpc.aio: `AsyncClient` and `AsyncAdminClient`.

Same API as the sync clients with awaitable methods; requests, responses, blob handling
and retry decisions come from the modules both flavours share.
"""

import asyncio
import functools
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

import grpc
from grpc import aio

from sparegrid.sdk import convert, inference, render
from sparegrid.sdk.blobs import (
    DEFAULT_CHUNK_SIZE,
    BlobInput,
    BlobSource,
    FileSink,
    MemorySink,
    Progress,
    Sink,
    aupload_requests,
    resume_offset,
)
from sparegrid.sdk.client import DEFAULT_TIMEOUT, Client, PathLike
from sparegrid.sdk.config import (
    Connection,
    pin_coordinator_key,
    resolve_address,
    resolve_admin_key,
    resolve_tls_ca,
)
from sparegrid.sdk.errors import from_rpc_error
from sparegrid.sdk.inference import AsyncInferenceJob
from sparegrid.sdk.job import AsyncJob
from sparegrid.sdk.models import (
    Account,
    Dispute,
    Estimate,
    Info,
    LedgerCheck,
    LedgerEntry,
    Node,
    NodeCredit,
    OutputRef,
    Requirements,
)
from sparegrid.sdk.results import TaskResult
from sparegrid.sdk.retry import WATCH_RECONNECT, Attempts, RetryPolicy, acall
from sparegrid.sdk.watch import WatchState
from sparegrid.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    blob_pb2,
    blob_pb2_grpc,
    client_pb2,
    client_pb2_grpc,
    common_pb2,
)

Req = TypeVar("Req")
Resp = TypeVar("Resp")


class _AsyncBase:
    def __init__(self, connection: Connection, timeout: float, retry: RetryPolicy | None) -> None:
        self.connection = connection
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.watch_retry = retry or WATCH_RECONNECT
        self._opened: aio.Channel | None = None

    @property
    def _channel(self) -> aio.Channel:
        """Opened on first use, so it belongs to the event loop that uses it."""
        if self._opened is None:
            self._opened = self.connection.aio_channel()
        return self._opened

    @property
    def address(self) -> str:
        return self.connection.address

    async def _unary(
        self,
        method: "aio.UnaryUnaryMultiCallable[Req, Resp]",
        request: Req,
        *,
        idempotent: bool = True,
    ) -> Resp:
        md = self.connection.metadata

        async def once() -> Resp:
            return await method(request, metadata=md, timeout=self.timeout)

        return await acall(once, self.retry, idempotent=idempotent)

    async def close(self) -> None:
        if self._opened is not None:
            await self._opened.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


class AsyncClient(_AsyncBase):
    """`Client` for asyncio: submits jobs, follows them and fetches verified results."""

    def __init__(
        self,
        address: str | None = None,
        api_key: str | None = None,
        *,
        tls_ca: PathLike | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        connection: Connection | None = None,
    ) -> None:
        connection = connection or Connection.resolve(address, api_key, tls_ca)
        super().__init__(connection, timeout, retry)
        self.chunk_size = chunk_size
        self._coordinator_key = b""
        self._sync: Client | None = None  # for the blocking tensor work of `infer`

    async def close(self) -> None:
        await super().close()
        if self._sync is not None:
            self._sync.close()

    async def infer(self, model: Any, inputs: Any, **options: Any) -> AsyncInferenceJob:
        """`Client.infer` for asyncio (same arguments); see sparegrid.sdk.inference."""
        if self._sync is None:
            self._sync = Client(connection=self.connection, timeout=self.timeout, retry=self.retry)
        job = await asyncio.to_thread(inference.submit, self._sync, model, inputs, **options)
        return AsyncInferenceJob(job)

    @functools.cached_property
    def _jobs(self) -> "client_pb2_grpc.ClientServiceAsyncStub":
        return client_pb2_grpc.ClientServiceStub(self._channel)

    @functools.cached_property
    def _blobs(self) -> "blob_pb2_grpc.BlobServiceAsyncStub":
        return blob_pb2_grpc.BlobServiceStub(self._channel)

    # --- blobs ---------------------------------------------------------------------------

    async def upload(self, source: BlobInput, *, on_progress: Progress | None = None) -> str:
        """Stores a file or bytes on the coordinator; returns its digest. Dedups and resumes."""
        blob = await asyncio.to_thread(BlobSource.open, source)
        md = self.connection.metadata

        async def attempt() -> None:
            request = blob_pb2.StatBlobRequest(digest=blob.digest)
            stat = await self._blobs.StatBlob(request, metadata=md, timeout=self.timeout)
            offset = resume_offset(stat, blob.size)
            if offset is None:
                if on_progress:
                    on_progress(blob.size, blob.size)
                return
            requests = aupload_requests(blob, offset, self.chunk_size, on_progress)
            await self._blobs.UploadBlob(requests, metadata=md)

        await acall(attempt, self.retry)
        return blob.digest

    async def download(
        self, digest: str, dest: PathLike, *, on_progress: Progress | None = None
    ) -> Path:
        """Downloads a blob to `dest` (via a partial file, resumed on retry); digest-checked."""
        sink = await asyncio.to_thread(FileSink, digest, Path(dest), on_progress)
        try:
            await self._download_into(sink)
        finally:
            await asyncio.to_thread(sink.close)
        return await asyncio.to_thread(sink.finish)

    async def _download_into(self, sink: Sink) -> None:
        attempts = Attempts(self.retry)
        while True:
            request = blob_pb2.DownloadBlobRequest(digest=sink.digest, offset=sink.offset)
            try:
                async for response in self._blobs.DownloadBlob(
                    request, metadata=self.connection.metadata
                ):
                    await sink.accept_async(response)
                    attempts.succeeded()
                return
            except grpc.RpcError as exc:
                await asyncio.sleep(attempts.failed(from_rpc_error(exc)))

    async def _fetch(self, ref: OutputRef) -> bytes:
        sink = MemorySink(ref.digest)
        try:
            await self._download_into(sink)
        finally:
            sink.close()
        return sink.finish()

    # --- jobs ----------------------------------------------------------------------------

    def _job(self, msg: common_pb2.Job) -> AsyncJob:
        return AsyncJob(self, convert.job_snapshot(msg))

    async def submit(
        self,
        kind: str,
        params: Mapping[str, Any] | None = None,
        inputs: Mapping[str, str] | None = None,
        *,
        name: str = "",
        requirements: Requirements | None = None,
        max_attempts: int = 0,
        idempotency_key: str | None = None,
        replicas: int = 0,
        quorum: int = 0,
        priority: int = 0,
        webhook_url: str = "",
    ) -> AsyncJob:
        """Submits a job; see `Client.submit`."""
        request = convert.submit_request(
            kind,
            params,
            inputs,
            name=name,
            requirements=requirements,
            max_attempts=max_attempts,
            idempotency_key=idempotency_key,
            replicas=replicas,
            quorum=quorum,
            priority=priority,
            webhook_url=webhook_url,
        )
        return self._job((await self._unary(self._jobs.SubmitJob, request)).job)

    async def estimate(
        self,
        kind: str,
        params: Mapping[str, Any] | None = None,
        inputs: Mapping[str, str] | None = None,
        *,
        requirements: Requirements | None = None,
        max_attempts: int = 0,
        replicas: int = 0,
        quorum: int = 0,
    ) -> Estimate:
        """What `submit` would cost; see `Client.estimate`."""
        spec = convert.submit_request(
            kind,
            params,
            inputs,
            requirements=requirements,
            max_attempts=max_attempts,
            replicas=replicas,
            quorum=quorum,
        ).spec
        request = client_pb2.EstimateJobRequest(spec=spec)
        return convert.estimate(await self._unary(self._jobs.EstimateJob, request))

    async def checksum(
        self, path: PathLike, tasks: int = 1, *, name: str = "", on_upload: Progress | None = None
    ) -> AsyncJob:
        digest = await self.upload(path, on_progress=on_upload)
        return await self.submit("checksum", {"tasks": tasks}, {"data": digest}, name=name)

    async def render(
        self,
        blend: PathLike,
        frames: "range | Sequence[int] | str | int | None" = None,
        samples: int | None = None,
        resolution: "str | Sequence[int] | None" = None,
        *,
        format: str = "png",
        depth: int | None = None,
        tiles: "str | Sequence[int] | None" = None,
        chunk: int = 1,
        blender: str | None = None,
        backend: str | None = None,
        name: str = "",
        max_attempts: int = 0,
        replicas: int = 0,
        quorum: int = 0,
        priority: int = 0,
        webhook_url: str = "",
        on_upload: Progress | None = None,
    ) -> AsyncJob:
        """`Client.render` for asyncio; the scene is checked and packed in a thread."""
        params, inputs, req = await self._render_job(
            blend, frames, samples, resolution, format, depth, tiles, chunk, blender, backend,
            on_upload,
        )  # fmt: skip
        return await self.submit(
            "render",
            params,
            inputs,
            name=name,
            requirements=req,
            max_attempts=max_attempts,
            replicas=replicas,
            quorum=quorum,
            priority=priority,
            webhook_url=webhook_url,
        )

    async def render_estimate(
        self,
        blend: PathLike,
        frames: "range | Sequence[int] | str | int | None" = None,
        samples: int | None = None,
        resolution: "str | Sequence[int] | None" = None,
        *,
        format: str = "png",
        depth: int | None = None,
        tiles: "str | Sequence[int] | None" = None,
        chunk: int = 1,
        blender: str | None = None,
        backend: str | None = None,
        max_attempts: int = 0,
        replicas: int = 0,
        quorum: int = 0,
        on_upload: Progress | None = None,
    ) -> Estimate:
        """`Client.render_estimate` for asyncio: what `render` would cost."""
        params, inputs, req = await self._render_job(
            blend, frames, samples, resolution, format, depth, tiles, chunk, blender, backend,
            on_upload,
        )  # fmt: skip
        return await self.estimate(
            "render",
            params,
            inputs,
            requirements=req,
            max_attempts=max_attempts,
            replicas=replicas,
            quorum=quorum,
        )

    async def _render_job(
        self,
        blend: PathLike,
        frames: "range | Sequence[int] | str | int | None",
        samples: int | None,
        resolution: "str | Sequence[int] | None",
        format: str,
        depth: int | None,
        tiles: "str | Sequence[int] | None",
        chunk: int,
        blender: str | None,
        backend: str | None,
        on_upload: Progress | None,
    ) -> tuple[dict[str, Any], dict[str, str], Requirements]:
        """A render job's params, its uploaded scene and its requirements; the scene is
        checked and packed in a thread."""
        prepared = render.prepare(
            Path(blend),
            frames=frames,
            samples=samples,
            resolution=resolution,
            format=format,
            depth=depth,
            tiles=tiles,
            chunk=chunk,
        )
        path, params = await asyncio.to_thread(prepared.__enter__)
        try:
            digest = await self.upload(path, on_progress=on_upload)
        finally:
            await asyncio.to_thread(prepared.__exit__, None, None, None)
        req = Requirements(software=render.requirements_software(blender, backend))
        return params, {"scene": digest}, req

    async def echo(
        self, data: str, tasks: int = 1, sleep_ms: int = 0, *, name: str = ""
    ) -> AsyncJob:
        params = {"tasks": tasks, "data": data, "sleep_ms": sleep_ms}
        return await self.submit("echo", params, name=name)

    async def get_job(self, job_id: str) -> AsyncJob:
        request = client_pb2.GetJobRequest(job_id=job_id)
        return self._job((await self._unary(self._jobs.GetJob, request)).job)

    async def list_jobs(self, limit: int = 50) -> list[AsyncJob]:
        request = client_pb2.ListJobsRequest(limit=limit)
        response = await self._unary(self._jobs.ListJobs, request)
        return [self._job(msg) for msg in response.jobs]

    async def cancel(self, job_id: str) -> AsyncJob:
        request = client_pb2.CancelJobRequest(job_id=job_id)
        return self._job((await self._unary(self._jobs.CancelJob, request)).job)

    async def watch(self, job_id: str, *, timeout: float | None = None) -> AsyncIterator[AsyncJob]:
        """Yields the job each time it changes, until it is final; reconnects when cut off."""
        state = WatchState(job_id, self.watch_retry, timeout)
        while True:
            stream = self._jobs.WatchJob(
                state.request, metadata=self.connection.metadata, timeout=state.remaining()
            )
            try:
                async for response in stream:
                    job = self._job(response.job)
                    yield job
                    if state.received(job.snapshot):
                        return
                delay = state.ended_early()
            except grpc.RpcError as exc:
                delay = state.failed(exc)
            finally:
                stream.cancel()
            await asyncio.sleep(delay)

    async def results(self, job_id: str, page_size: int = 0) -> list[TaskResult]:
        """Every task's result, all pages."""
        out: list[TaskResult] = []
        token = ""
        while True:
            request = client_pb2.GetJobResultsRequest(
                job_id=job_id, page_size=page_size, page_token=token
            )
            response = await self._unary(self._jobs.GetJobResults, request)
            out += [convert.task_result(job_id, r, afetch=self._fetch) for r in response.results]
            token = response.next_page_token
            if not token:
                return out

    async def retry_job(self, job_id: str) -> AsyncJob:
        """Runs the tasks of a failed or cancelled job that did not succeed again."""
        request = client_pb2.RetryJobRequest(job_id=job_id)
        return self._job((await self._unary(self._jobs.RetryJob, request)).job)

    async def disputes(self, job_id: str) -> list[Dispute]:
        """The job's tasks whose results disagreed, with the evidence."""
        request = client_pb2.GetJobRequest(job_id=job_id)
        response = await self._unary(self._jobs.GetJob, request)
        return [convert.dispute(d) for d in response.disputes]

    async def stake(self, amount: int, idempotency_key: str = "") -> Account:
        """Locks `amount` of the account's credit as its stake (a negative amount releases
        that much, once the account's nodes have been away for the lock time)."""
        request = client_pb2.StakeRequest(
            amount=amount, idempotency_key=idempotency_key or uuid.uuid4().hex
        )
        await self._unary(self._jobs.Stake, request)
        return await self.account()

    async def account(self) -> Account:
        response = await self._unary(self._jobs.GetAccount, client_pb2.GetAccountRequest())
        return convert.account_from_client(response)

    async def node_credit(self, node_id: str, limit: int = 100) -> NodeCredit:
        """A node's credit and the ledger entries explaining it; the caller's account
        must own the node (a worker declares its owner with SPAREGRID_OWNER_KEY)."""
        request = client_pb2.GetNodeCreditRequest(node_id=node_id, limit=limit)
        return convert.node_credit(await self._unary(self._jobs.GetNodeCredit, request))

    async def info(self) -> Info:
        return convert.info(await self._unary(self._jobs.GetInfo, client_pb2.GetInfoRequest()))

    async def coordinator_key(self) -> bytes:
        """The coordinator's countersigning key, pinned on first use (see Client)."""
        if not self._coordinator_key:
            offered = (await self.info()).coordinator_key
            self._coordinator_key = pin_coordinator_key(self.connection.address, offered)
        return self._coordinator_key


class AsyncAdminClient(_AsyncBase):
    """`AdminClient` for asyncio."""

    def __init__(
        self,
        address: str | None = None,
        api_key: str | None = None,
        *,
        key_file: PathLike | None = None,
        tls_ca: PathLike | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        connection: Connection | None = None,
    ) -> None:
        if connection is None:
            target = resolve_address(address)
            key = resolve_admin_key(target, api_key, key_file)
            connection = Connection(target, key, resolve_tls_ca(tls_ca))
        super().__init__(connection, timeout, retry)

    @functools.cached_property
    def _admin(self) -> "admin_pb2_grpc.AdminServiceAsyncStub":
        return admin_pb2_grpc.AdminServiceStub(self._channel)

    async def create_account(
        self, name: str, credit: int = 0, admin: bool = False
    ) -> tuple[Account, str]:
        request = admin_pb2.CreateAccountRequest(name=name, initial_credit=credit, is_admin=admin)
        response = await self._unary(self._admin.CreateAccount, request, idempotent=False)
        return convert.account(response.account), response.api_key

    async def list_accounts(self) -> list[Account]:
        response = await self._unary(self._admin.ListAccounts, admin_pb2.ListAccountsRequest())
        return [convert.account(a) for a in response.accounts]

    async def grant(
        self, name: str, amount: int, reason: str = "", idempotency_key: str | None = None
    ) -> Account:
        request = convert.grant_request(name, amount, reason, idempotency_key)
        return convert.account((await self._unary(self._admin.GrantCredit, request)).account)

    async def ban_node(self, node_id: str, reason: str = "") -> Node:
        """No more work for the node until `reinstate_node`."""
        request = admin_pb2.BanNodeRequest(node_id=node_id, reason=reason)
        return convert.node((await self._unary(self._admin.BanNode, request)).node)

    async def approve_node(self, node_id: str, reason: str = "") -> Node:
        """Lets a node that waits for approval (`--enrollment approve`) take work."""
        request = admin_pb2.ApproveNodeRequest(node_id=node_id, reason=reason)
        return convert.node((await self._unary(self._admin.ApproveNode, request)).node)

    async def reinstate_node(self, node_id: str, reason: str = "") -> Node:
        """Lifts a ban or a quarantine; the node's strikes and streak start from zero."""
        request = admin_pb2.ReinstateNodeRequest(node_id=node_id, reason=reason)
        return convert.node((await self._unary(self._admin.ReinstateNode, request)).node)

    async def nodes(self) -> list[Node]:
        response = await self._unary(self._admin.ListNodes, admin_pb2.ListNodesRequest())
        return [convert.node(n) for n in response.nodes]

    async def ledger_check(self) -> LedgerCheck:
        request = admin_pb2.CheckLedgerRequest()
        return convert.ledger_check(await self._unary(self._admin.CheckLedger, request))

    async def ledger_entries(
        self, account: str = "", job_id: str = "", limit: int = 100
    ) -> list[LedgerEntry]:
        request = admin_pb2.ListLedgerEntriesRequest(account=account, job_id=job_id, limit=limit)
        response = await self._unary(self._admin.ListLedgerEntries, request)
        return [convert.ledger_entry(e) for e in response.entries]

    async def disputes(self, job_id: str) -> list[Dispute]:
        """Any account's job's disputes, with their evidence."""
        request = admin_pb2.ListLedgerEntriesRequest(job_id=job_id, limit=1)
        response = await self._unary(self._admin.ListLedgerEntries, request)
        return [convert.dispute(d) for d in response.disputes]
