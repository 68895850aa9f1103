"""The client: `AsyncClient` for jobs and blobs (`AsyncAdminClient`, for operators, is in
admin.py; generation jobs' calls are in generate.py).

Requests, responses, blob handling and retry decisions come from modules both flavours
share (convert, blobs, retry, watch); blocking work (hashing, packing a scene, tensors)
runs through `aoffload`.
"""

import functools
import os
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar

import grpc

from sparegrid.sdk import convert, render
from sparegrid.sdk._async import inference
from sparegrid.sdk._async.inference import AsyncInferenceJob
from sparegrid.sdk._async.job import AsyncJob
from sparegrid.sdk.backend import AsyncChannelRef, aoffload, asleep
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
from sparegrid.sdk.config import (
    Connection,
    PathLike,
    pin_coordinator_key,
)
from sparegrid.sdk.errors import from_rpc_error
from sparegrid.sdk.models import (
    Account,
    AttemptLog,
    Dispute,
    Estimate,
    Info,
    NodeCredit,
    OutputRef,
    Requirements,
)
from sparegrid.sdk.results import TaskResult
from sparegrid.sdk.retry import WATCH_RECONNECT, Attempts, RetryPolicy, acall
from sparegrid.sdk.watch import WatchState
from sparegrid.v1 import (
    blob_pb2,
    blob_pb2_grpc,
    client_pb2,
    client_pb2_grpc,
    common_pb2,
)

if TYPE_CHECKING:
    from sparegrid.sdk._async.generate import AsyncGenerateJob
    from sparegrid.sdk.backend import AsyncUnary

Req = TypeVar("Req")
Resp = TypeVar("Resp")
DEFAULT_TIMEOUT = 30.0


class _AsyncBase:
    def __init__(self, connection: Connection, timeout: float, retry: RetryPolicy | None) -> None:
        self.connection = connection
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.watch_retry = retry or WATCH_RECONNECT
        self._channel_ref = AsyncChannelRef(connection)

    @property
    def address(self) -> str:
        return self.connection.address

    async def _unary(
        self,
        method: "AsyncUnary[Req, Resp]",
        request: Req,
        *,
        idempotent: bool = True,
    ) -> Resp:
        md = self.connection.metadata

        async def once() -> Resp:
            return await method(request, metadata=md, timeout=self.timeout)

        return await acall(once, self.retry, idempotent=idempotent)

    async def close(self) -> None:
        await self._channel_ref.close()

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
    """Submits jobs, follows them and fetches their verified results.

    `address`, `api_key` and `tls_ca` default to SPAREGRID_COORDINATOR, SPAREGRID_API_KEY
    and SPAREGRID_TLS_CA; `tls=True` (or SPAREGRID_TLS=1) uses TLS with the system's trust
    roots. Without an API key the constructor raises AuthenticationError.
    """

    def __init__(
        self,
        address: str | None = None,
        api_key: str | None = None,
        *,
        tls_ca: PathLike | None = None,
        tls: bool | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        connection: Connection | None = None,
    ) -> None:
        connection = connection or Connection.resolve(address, api_key, tls_ca, tls)
        super().__init__(connection, timeout, retry)
        self.chunk_size = chunk_size
        self._coordinator_key = b""

    @functools.cached_property
    def _jobs(self) -> "client_pb2_grpc.ClientServiceAsyncStub":
        return client_pb2_grpc.ClientServiceStub(self._channel_ref.channel)

    @functools.cached_property
    def _blobs(self) -> "blob_pb2_grpc.BlobServiceAsyncStub":
        return blob_pb2_grpc.BlobServiceStub(self._channel_ref.channel)

    # --- blobs ---------------------------------------------------------------------------

    async def upload(self, source: BlobInput, *, on_progress: Progress | None = None) -> str:
        """Stores a file or bytes on the coordinator; returns its digest. Dedups and resumes."""
        blob = await aoffload(BlobSource.open, source)
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
        sink = await aoffload(FileSink, digest, Path(dest), on_progress)
        try:
            await self._download_into(sink)
        finally:
            await aoffload(sink.close)
        return await aoffload(sink.finish)

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
                await asleep(attempts.failed(from_rpc_error(exc)))

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
        keep_logs: bool = False,
    ) -> AsyncJob:
        """Submits a job; `inputs` maps input names to digests from `upload`.

        The idempotency key (a fresh uuid4 by default) makes a retried submit return the
        job the first try created instead of a second one. `priority` (-100 to 100) orders
        the account's own jobs; `webhook_url` is called (POST, signed) once the job ends.
        A failed task's log is always kept; `keep_logs` keeps successful ones' too (see
        `task_logs`).
        """
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
            keep_logs=keep_logs,
        )
        response = await self._unary(self._jobs.SubmitJob, request)
        return self._job(response.job)

    async def estimate(
        self,
        kind: str,
        params: Mapping[str, Any] | None = None,
        inputs: Mapping[str, str] | None = None,
        *,
        name: str = "",
        requirements: Requirements | None = None,
        max_attempts: int = 0,
        replicas: int = 0,
        quorum: int = 0,
        priority: int = 0,
        webhook_url: str = "",
    ) -> Estimate:
        """What `submit` with these arguments would cost: the coordinator checks, splits and
        prices the job as it would at submit (inputs uploaded first; a name, priority or
        webhook it would refuse is refused here too), and stores nothing."""
        spec = convert.submit_request(
            kind,
            params,
            inputs,
            name=name,
            requirements=requirements,
            max_attempts=max_attempts,
            replicas=replicas,
            quorum=quorum,
            priority=priority,
            webhook_url=webhook_url,
        ).spec
        request = client_pb2.EstimateJobRequest(spec=spec)
        return convert.estimate(await self._unary(self._jobs.EstimateJob, request))

    async def checksum(
        self, path: PathLike, tasks: int = 1, *, name: str = "", on_upload: Progress | None = None
    ) -> AsyncJob:
        """Uploads a file and submits a `checksum` job over it, split into `tasks` ranges."""
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
        keep_logs: bool = False,
        on_upload: Progress | None = None,
    ) -> AsyncJob:
        """Renders a .blend with Cycles: one task per frame (or `chunk` frames), or one per
        tile of a still with `tiles=(columns, rows)`. Unset frames, samples and resolution
        come from the scene (read with bpy, when installed); external files are packed or,
        when missing, refused. `blender="5.0"` keeps the job on nodes with that Blender, and
        `backend="optix"` (cuda, cpu) with it on nodes where Cycles can use that backend."""
        params, inputs, req = await self._render_job(
            blend,
            frames,
            samples,
            resolution,
            format,
            depth,
            tiles,
            chunk,
            blender,
            backend,
            on_upload,
        )
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
            keep_logs=keep_logs,
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
        name: str = "",
        max_attempts: int = 0,
        replicas: int = 0,
        quorum: int = 0,
        priority: int = 0,
        webhook_url: str = "",
        on_upload: Progress | None = None,
    ) -> Estimate:
        """What `render` with these arguments would cost; the scene is checked, packed and
        uploaded as for `render` (so the coordinator can split it), nothing is submitted."""
        params, inputs, req = await self._render_job(
            blend,
            frames,
            samples,
            resolution,
            format,
            depth,
            tiles,
            chunk,
            blender,
            backend,
            on_upload,
        )
        return await self.estimate(
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
        checked and packed off the event loop."""
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
        path, params = await aoffload(prepared.__enter__)
        try:
            digest = await self.upload(path, on_progress=on_upload)
        finally:
            await aoffload(prepared.__exit__, None, None, None)
        req = Requirements(software=render.requirements_software(blender, backend))
        return params, {"scene": digest}, req

    async def echo(
        self, data: str, tasks: int = 1, sleep_ms: int = 0, *, name: str = ""
    ) -> AsyncJob:
        params = {"tasks": tasks, "data": data, "sleep_ms": sleep_ms}
        return await self.submit("echo", params, name=name)

    async def infer(
        self,
        model: Any,
        inputs: Any,
        *,
        batch_size: int = 64,
        precision: str = "fp32",
        deterministic: bool = False,
        compile: bool = False,
        min_vram_gb: float = 0,
        device: str = "",
        shard_batches: int | None = None,
        name: str = "",
        replicas: int = 0,
        quorum: int = 0,
        max_attempts: int = 0,
        priority: int = 0,
        webhook_url: str = "",
        keep_logs: bool = False,
    ) -> AsyncInferenceJob:
        """Runs a model over inputs on the network; see sparegrid.sdk.inference.

        `model`: an nn.Module (exported here, dynamic batch) or a saved .pt2 path;
        `inputs`: a tensor, tuple/dict of tensors, an iterable of batches, or a path: a
        safetensors file, a folder of them, or a Parquet or Arrow table (see
        sparegrid.sdk.inputfiles). `precision`: fp32, tf32, bf16 or fp16, applied on the
        worker. `compile`: the worker compiles the program (minutes, once per node and
        model; then faster).
        `replicas`/`quorum`, `max_attempts`, `priority`, `webhook_url`, `keep_logs`: as
        for `submit`.
        """
        return await inference.submit(
            self,
            model,
            inputs,
            batch_size=batch_size,
            precision=precision,
            deterministic=deterministic,
            compile=compile,
            min_vram_gb=min_vram_gb,
            device=device,
            shard_batches=shard_batches,
            name=name,
            replicas=replicas,
            quorum=quorum,
            max_attempts=max_attempts,
            priority=priority,
            webhook_url=webhook_url,
            keep_logs=keep_logs,
        )

    async def generate(
        self,
        model_dir: "str | os.PathLike[str]",
        prompts: "str | os.PathLike[str] | Iterable[dict[str, Any]]",
        **options: Any,
    ) -> "AsyncGenerateJob":
        """Decodes OpenAI Batch requests (a JSONL path, or the requests as dicts) with the
        language model in `model_dir` (config.json, tokenizer.json, safetensors); see
        sparegrid.sdk.generate. Options: max_tokens (256), temperature (0), seed,
        precision (fp32, bf16, fp16), device, min_vram_gb, task_tokens, name, replicas,
        quorum, keep_logs. `.completions()` yields them in request order. An account holding
        less than the least the job costs is refused (INSUFFICIENT_CREDIT) before anything
        is uploaded."""
        from sparegrid.sdk._async import generate

        return await generate.submit(self, Path(model_dir), prompts, **options)

    async def generate_estimate(
        self,
        model_dir: "str | os.PathLike[str]",
        prompts: "str | os.PathLike[str] | Iterable[dict[str, Any]]",
        **options: Any,
    ) -> Estimate:
        """What `generate` with these arguments would cost (tasks, tokens, credit held),
        priced by the coordinator; the model and prompts are checked and uploaded as a
        submit would, and no job is made. Takes generate's options but keep_logs."""
        from sparegrid.sdk._async import generate

        return await generate.estimate(self, Path(model_dir), prompts, **options)

    async def generate_attach(
        self, job_id: str, model_dir: "str | os.PathLike[str]", prompts: "str | os.PathLike[str]"
    ) -> "AsyncGenerateJob":
        """The AsyncGenerateJob of a generate job submitted earlier (whose submitter went
        away), given the same model folder and batch file; both are checked against the
        job's input digests first (sparegrid.sdk.attach). Nothing is uploaded or charged."""
        from sparegrid.sdk._async import generate

        return await generate.attach(self, job_id, Path(model_dir), Path(prompts))

    async def get_job(self, job_id: str) -> AsyncJob:
        request = client_pb2.GetJobRequest(job_id=job_id)
        response = await self._unary(self._jobs.GetJob, request)
        return self._job(response.job)

    async def list_jobs(self, limit: int = 50) -> list[AsyncJob]:
        request = client_pb2.ListJobsRequest(limit=limit)
        response = await self._unary(self._jobs.ListJobs, request)
        return [self._job(msg) for msg in response.jobs]

    async def cancel(self, job_id: str) -> AsyncJob:
        request = client_pb2.CancelJobRequest(job_id=job_id)
        response = await self._unary(self._jobs.CancelJob, request)
        return self._job(response.job)

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
            await asleep(delay)

    async def results_from(self, job_id: str, start: int, limit: int = 64) -> list[TaskResult]:
        """Up to `limit` results of tasks `start`, `start + 1`, ... (one page)."""
        token = str(start - 1) if start > 0 else ""
        request = client_pb2.GetJobResultsRequest(job_id=job_id, page_size=limit, page_token=token)
        response = await self._unary(self._jobs.GetJobResults, request)
        return [convert.task_result(job_id, r, afetch=self._fetch) for r in response.results]

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

    async def task_logs(self, job_id: str, task: int | None = None) -> list[AttemptLog]:
        """The logs workers returned for the job's attempts (or task `task`'s): failed
        ones, and successful ones when the job was submitted with `keep_logs`. Each is
        checked here against its node's signature: `verified` says whether it held."""
        logs: list[AttemptLog] = []
        token = ""
        while True:
            request = client_pb2.GetTaskLogsRequest(
                job_id=job_id, all_tasks=task is None, task_index=task or 0, page_token=token
            )
            response = await self._unary(self._jobs.GetTaskLogs, request)
            logs += [convert.attempt_log(job_id, msg) for msg in response.logs]
            token = response.next_page_token
            if not token:
                return logs

    async def retry_job(self, job_id: str) -> AsyncJob:
        """Runs the tasks of a failed or cancelled job that did not succeed again."""
        request = client_pb2.RetryJobRequest(job_id=job_id)
        response = await self._unary(self._jobs.RetryJob, request)
        return self._job(response.job)

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
        """The coordinator's countersigning key: SPAREGRID_COORDINATOR_KEY, or the key
        pinned under $XDG_CONFIG_HOME/sparegrid/coordinators/ (by `coordinator serve`, or
        here on first use). A coordinator offering another key raises VerificationError."""
        if not self._coordinator_key:
            info = await self.info()
            self._coordinator_key = pin_coordinator_key(
                self.connection.address, info.coordinator_key
            )
        return self._coordinator_key
