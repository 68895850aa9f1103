"""The synchronous clients, on grpc's sync API: `Client` for jobs and blobs, `AdminClient`."""

import os
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

import grpc

from sparegrid.sdk import convert, inference, render
from sparegrid.sdk.blobs import (
    DEFAULT_CHUNK_SIZE,
    BlobInput,
    BlobSource,
    FileSink,
    MemorySink,
    Progress,
    Sink,
    resume_offset,
    upload_requests,
)
from sparegrid.sdk.config import (
    Connection,
    pin_coordinator_key,
    resolve_address,
    resolve_admin_key,
    resolve_tls_ca,
)
from sparegrid.sdk.errors import from_rpc_error
from sparegrid.sdk.generate import GenerateJob
from sparegrid.sdk.inference import InferenceJob
from sparegrid.sdk.job import Job
from sparegrid.sdk.models import (
    Account,
    Dispute,
    Info,
    LedgerCheck,
    LedgerEntry,
    Node,
    NodeCredit,
    OutputRef,
    Requirements,
)
from sparegrid.sdk.results import TaskResult
from sparegrid.sdk.retry import WATCH_RECONNECT, Attempts, RetryPolicy, call
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
PathLike = str | os.PathLike[str]
DEFAULT_TIMEOUT = 30.0


class _SyncBase:
    def __init__(self, connection: Connection, timeout: float, retry: RetryPolicy | None) -> None:
        self.connection = connection
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.watch_retry = retry or WATCH_RECONNECT
        self._channel = connection.channel()

    @property
    def address(self) -> str:
        return self.connection.address

    def _unary(
        self,
        method: "grpc.UnaryUnaryMultiCallable[Req, Resp]",
        request: Req,
        *,
        idempotent: bool = True,
    ) -> Resp:
        md = self.connection.metadata
        return call(
            lambda: method(request, metadata=md, timeout=self.timeout),
            self.retry,
            idempotent=idempotent,
        )

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class Client(_SyncBase):
    """Submits jobs, follows them and fetches their verified results.

    `address`, `api_key` and `tls_ca` default to SPAREGRID_COORDINATOR, SPAREGRID_API_KEY
    and SPAREGRID_TLS_CA; without an API key the constructor raises AuthenticationError.
    """

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
        self._jobs = client_pb2_grpc.ClientServiceStub(self._channel)
        self._coordinator_key = b""
        self._blobs = blob_pb2_grpc.BlobServiceStub(self._channel)

    # --- blobs ---------------------------------------------------------------------------

    def upload(self, source: BlobInput, *, on_progress: Progress | None = None) -> str:
        """Stores a file or bytes on the coordinator; returns its digest. Dedups and resumes."""
        blob = BlobSource.open(source)

        def attempt() -> None:
            stat = self._blobs.StatBlob(
                blob_pb2.StatBlobRequest(digest=blob.digest),
                metadata=self.connection.metadata,
                timeout=self.timeout,
            )
            offset = resume_offset(stat, blob.size)
            if offset is None:
                if on_progress:
                    on_progress(blob.size, blob.size)
                return
            requests = upload_requests(blob, offset, self.chunk_size, on_progress)
            self._blobs.UploadBlob(requests, metadata=self.connection.metadata)

        call(attempt, self.retry)
        return blob.digest

    def download(self, digest: str, dest: PathLike, *, on_progress: Progress | None = None) -> Path:
        """Downloads a blob to `dest` (via a partial file, resumed on retry); digest-checked."""
        sink = FileSink(digest, Path(dest), on_progress)
        try:
            self._download_into(sink)
        finally:
            sink.close()
        return sink.finish()

    def _download_into(self, sink: Sink) -> None:
        attempts = Attempts(self.retry)
        while True:
            request = blob_pb2.DownloadBlobRequest(digest=sink.digest, offset=sink.offset)
            try:
                for response in self._blobs.DownloadBlob(
                    request, metadata=self.connection.metadata
                ):
                    sink.accept(response)
                    attempts.succeeded()
                return
            except grpc.RpcError as exc:
                time.sleep(attempts.failed(from_rpc_error(exc)))

    def _fetch(self, ref: OutputRef) -> bytes:
        sink = MemorySink(ref.digest)
        try:
            self._download_into(sink)
        finally:
            sink.close()
        return sink.finish()

    # --- jobs ----------------------------------------------------------------------------

    def _job(self, msg: common_pb2.Job) -> Job:
        return Job(self, convert.job_snapshot(msg))

    def submit(
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
    ) -> Job:
        """Submits a job; `inputs` maps input names to digests from `upload`.

        The idempotency key (a fresh uuid4 by default) makes a retried submit return the
        job the first try created instead of a second one.
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
        )
        return self._job(self._unary(self._jobs.SubmitJob, request).job)

    def checksum(
        self, path: PathLike, tasks: int = 1, *, name: str = "", on_upload: Progress | None = None
    ) -> Job:
        """Uploads a file and submits a `checksum` job over it, split into `tasks` ranges."""
        digest = self.upload(path, on_progress=on_upload)
        return self.submit("checksum", {"tasks": tasks}, {"data": digest}, name=name)

    def render(
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
        on_upload: Progress | None = None,
    ) -> Job:
        """Renders a .blend with Cycles: one task per frame (or `chunk` frames), or one per
        tile of a still with `tiles=(columns, rows)`. Unset frames, samples and resolution
        come from the scene (read with bpy, when installed); external files are packed or,
        when missing, refused. `blender="5.0"` keeps the job on nodes with that Blender, and
        `backend="optix"` (cuda, cpu) with it on nodes where Cycles can use that backend."""
        with render.prepare(
            Path(blend),
            frames=frames,
            samples=samples,
            resolution=resolution,
            format=format,
            depth=depth,
            tiles=tiles,
            chunk=chunk,
        ) as (path, params):
            digest = self.upload(path, on_progress=on_upload)
        req = Requirements(software=render.requirements_software(blender, backend))
        return self.submit(
            "render",
            params,
            {"scene": digest},
            name=name,
            requirements=req,
            max_attempts=max_attempts,
            replicas=replicas,
            quorum=quorum,
        )

    def echo(self, data: str, tasks: int = 1, sleep_ms: int = 0, *, name: str = "") -> Job:
        params = {"tasks": tasks, "data": data, "sleep_ms": sleep_ms}
        return self.submit("echo", params, name=name)

    def infer(
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
    ) -> InferenceJob:
        """Runs a model over inputs on the network; see sparegrid.sdk.inference.

        `model`: an nn.Module (exported here, dynamic batch) or a saved .pt2 path;
        `inputs`: a tensor, tuple/dict of tensors, a safetensors path, or an iterable of
        batches. `precision`: fp32, tf32, bf16 or fp16, applied on the worker. `compile`:
        the worker compiles the program (minutes, once per node and model; then faster).
        `replicas`/`quorum`: the verification policy, as for `submit`.
        """
        return inference.submit(
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
        )

    def generate(
        self,
        model_dir: "str | os.PathLike[str]",
        prompts: "str | os.PathLike[str] | Iterable[dict[str, Any]]",
        **options: Any,
    ) -> "GenerateJob":
        """Decodes OpenAI Batch requests (a JSONL path, or the requests as dicts) with the
        language model in `model_dir` (config.json, tokenizer.json, safetensors); see
        sparegrid.sdk.generate. Options: max_tokens (256), temperature (0), seed, precision
        (fp32, bf16, fp16), device, min_vram_gb, task_tokens, name, replicas, quorum.
        `.completions()` yields them in request order."""
        from sparegrid.sdk import generate

        path = Path(prompts) if isinstance(prompts, str | os.PathLike) else prompts
        return generate.submit(self, Path(model_dir), path, **options)

    def get_job(self, job_id: str) -> Job:
        return self._job(
            self._unary(self._jobs.GetJob, client_pb2.GetJobRequest(job_id=job_id)).job
        )

    def list_jobs(self, limit: int = 50) -> list[Job]:
        response = self._unary(self._jobs.ListJobs, client_pb2.ListJobsRequest(limit=limit))
        return [self._job(msg) for msg in response.jobs]

    def cancel(self, job_id: str) -> Job:
        request = client_pb2.CancelJobRequest(job_id=job_id)
        return self._job(self._unary(self._jobs.CancelJob, request).job)

    def watch(self, job_id: str, *, timeout: float | None = None) -> Iterator[Job]:
        """Yields the job each time it changes, until it is final; reconnects when cut off."""
        state = WatchState(job_id, self.watch_retry, timeout)
        while True:
            stream = self._jobs.WatchJob(
                state.request, metadata=self.connection.metadata, timeout=state.remaining()
            )
            try:
                for response in stream:
                    job = self._job(response.job)
                    yield job
                    if state.received(job.snapshot):
                        return
                delay = state.ended_early()
            except grpc.RpcError as exc:
                delay = state.failed(exc)
            finally:
                stream.cancel()
            time.sleep(delay)

    def results_from(self, job_id: str, start: int, limit: int = 64) -> list[TaskResult]:
        """Up to `limit` results of tasks `start`, `start + 1`, ... (one page)."""
        token = str(start - 1) if start > 0 else ""
        request = client_pb2.GetJobResultsRequest(job_id=job_id, page_size=limit, page_token=token)
        response = self._unary(self._jobs.GetJobResults, request)
        return [convert.task_result(job_id, r, fetch=self._fetch) for r in response.results]

    def results(self, job_id: str, page_size: int = 0) -> list[TaskResult]:
        """Every task's result, all pages."""
        out: list[TaskResult] = []
        token = ""
        while True:
            request = client_pb2.GetJobResultsRequest(
                job_id=job_id, page_size=page_size, page_token=token
            )
            response = self._unary(self._jobs.GetJobResults, request)
            out += [convert.task_result(job_id, r, fetch=self._fetch) for r in response.results]
            token = response.next_page_token
            if not token:
                return out

    def retry_job(self, job_id: str) -> Job:
        """Runs the tasks of a failed or cancelled job that did not succeed again."""
        request = client_pb2.RetryJobRequest(job_id=job_id)
        return self._job(self._unary(self._jobs.RetryJob, request).job)

    def disputes(self, job_id: str) -> list[Dispute]:
        """The job's tasks whose results disagreed, with the evidence."""
        response = self._unary(self._jobs.GetJob, client_pb2.GetJobRequest(job_id=job_id))
        return [convert.dispute(d) for d in response.disputes]

    def stake(self, amount: int, idempotency_key: str = "") -> Account:
        """Locks `amount` of the account's credit as its stake (a negative amount releases
        that much, once the account's nodes have been away for the lock time)."""
        request = client_pb2.StakeRequest(
            amount=amount, idempotency_key=idempotency_key or uuid.uuid4().hex
        )
        self._unary(self._jobs.Stake, request)
        return self.account()

    def account(self) -> Account:
        response = self._unary(self._jobs.GetAccount, client_pb2.GetAccountRequest())
        return convert.account_from_client(response)

    def node_credit(self, node_id: str, limit: int = 100) -> NodeCredit:
        """A node's credit and the ledger entries explaining it; the caller's account
        must own the node (a worker declares its owner with SPAREGRID_OWNER_KEY)."""
        request = client_pb2.GetNodeCreditRequest(node_id=node_id, limit=limit)
        return convert.node_credit(self._unary(self._jobs.GetNodeCredit, request))

    def info(self) -> Info:
        return convert.info(self._unary(self._jobs.GetInfo, client_pb2.GetInfoRequest()))

    def coordinator_key(self) -> bytes:
        """The coordinator's countersigning key: SPAREGRID_COORDINATOR_KEY, or the key
        pinned under $XDG_CONFIG_HOME/sparegrid/coordinators/ (by `coordinator serve`, or
        here on first use). A coordinator offering another key raises VerificationError."""
        if not self._coordinator_key:
            offered = self.info().coordinator_key
            self._coordinator_key = pin_coordinator_key(self.connection.address, offered)
        return self._coordinator_key


class AdminClient(_SyncBase):
    """Operator calls. The key: `api_key`, `key_file`, SPAREGRID_ADMIN_KEY, or the file
    `coordinator serve` recorded under $XDG_CONFIG_HOME/sparegrid/admin/."""

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
        self._admin = admin_pb2_grpc.AdminServiceStub(self._channel)

    def create_account(
        self, name: str, credit: int = 0, admin: bool = False
    ) -> tuple[Account, str]:
        """Creates an account; returns it and its API key (shown this once)."""
        request = admin_pb2.CreateAccountRequest(name=name, initial_credit=credit, is_admin=admin)
        response = self._unary(self._admin.CreateAccount, request, idempotent=False)
        return convert.account(response.account), response.api_key

    def list_accounts(self) -> list[Account]:
        response = self._unary(self._admin.ListAccounts, admin_pb2.ListAccountsRequest())
        return [convert.account(a) for a in response.accounts]

    def grant(
        self, name: str, amount: int, reason: str = "", idempotency_key: str | None = None
    ) -> Account:
        request = convert.grant_request(name, amount, reason, idempotency_key)
        return convert.account(self._unary(self._admin.GrantCredit, request).account)

    def ban_node(self, node_id: str, reason: str = "") -> Node:
        """No more work for the node until `reinstate_node`."""
        request = admin_pb2.BanNodeRequest(node_id=node_id, reason=reason)
        return convert.node((self._unary(self._admin.BanNode, request)).node)

    def approve_node(self, node_id: str, reason: str = "") -> Node:
        """Lets a node that waits for approval (`--enrollment approve`) take work."""
        request = admin_pb2.ApproveNodeRequest(node_id=node_id, reason=reason)
        return convert.node((self._unary(self._admin.ApproveNode, request)).node)

    def reinstate_node(self, node_id: str, reason: str = "") -> Node:
        """Lifts a ban or a quarantine; the node's strikes and streak start from zero."""
        request = admin_pb2.ReinstateNodeRequest(node_id=node_id, reason=reason)
        return convert.node((self._unary(self._admin.ReinstateNode, request)).node)

    def nodes(self) -> list[Node]:
        response = self._unary(self._admin.ListNodes, admin_pb2.ListNodesRequest())
        return [convert.node(n) for n in response.nodes]

    def ledger_check(self) -> LedgerCheck:
        return convert.ledger_check(
            self._unary(self._admin.CheckLedger, admin_pb2.CheckLedgerRequest())
        )

    def ledger_entries(
        self, account: str = "", job_id: str = "", limit: int = 100
    ) -> list[LedgerEntry]:
        request = admin_pb2.ListLedgerEntriesRequest(account=account, job_id=job_id, limit=limit)
        response = self._unary(self._admin.ListLedgerEntries, request)
        return [convert.ledger_entry(e) for e in response.entries]

    def disputes(self, job_id: str) -> list[Dispute]:
        """Any account's job's disputes, with their evidence."""
        request = admin_pb2.ListLedgerEntriesRequest(job_id=job_id, limit=1)
        response = self._unary(self._admin.ListLedgerEntries, request)
        return [convert.dispute(d) for d in response.disputes]
