"""A fake coordinator for tests of the SDK and the CLI.

ClientService, AdminService and BlobService over dicts. Jobs of the built-in kinds (echo,
checksum) run in the background on one in-process "node" that signs real receipts, one
task per `tick` seconds. Faults to inject: `fail_indices` (tasks that fail) and
`cut_watch_after` (the next WatchJob stream drops with UNAVAILABLE after that many messages).
"""

import asyncio
import json
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import timestamp_pb2

from sparegrid.sdk.testing._rpc import Abort, Context, abort, aborts
from sparegrid.sdk.testing.blobs import InMemoryBlobService
from sparegrid.v1 import admin_pb2, client_pb2, client_pb2_grpc, common_pb2
from sparegrid.wire import Signer, sha256_hex
from sparegrid.wire.receipt import countersign, make_receipts, sign_batch

PRICE = 1
INLINE_LIMIT = 64 * 1024
KINDS = {"echo": "returns its data", "checksum": "SHA-256 of byte ranges of input 'data'"}
FINAL = (
    common_pb2.JOB_STATE_SUCCEEDED,
    common_pb2.JOB_STATE_FAILED,
    common_pb2.JOB_STATE_CANCELLED,
)


def now() -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.GetCurrentTime()
    return stamp


@dataclass
class FakeJob:
    msg: common_pb2.Job
    params: dict[str, Any]
    inputs: dict[str, str]
    results: list[client_pb2.TaskResult] = field(default_factory=list)
    version: int = 0


class FakeCoordinator(client_pb2_grpc.ClientServiceServicer):
    """ClientService over dicts; `blobs` and `FakeAdminService(self)` share its state."""

    def __init__(self, tick: float = 0.0, admin_key: str = "admin-key") -> None:
        self.tick = tick
        self.blobs = InMemoryBlobService()
        self.signer = Signer.generate()
        self.coordinator_signer = Signer.generate()  # countersigns accepted results
        self.accounts: dict[str, admin_pb2.Account] = {}
        self.keys: dict[str, str] = {}
        self.jobs: dict[str, FakeJob] = {}
        self.submits: dict[tuple[str, str], tuple[str, bytes]] = {}  # (account, key)
        self.grants: set[str] = set()
        self.ledger: list[admin_pb2.LedgerEntry] = []
        self.fail_indices: set[int] = set()
        self.cut_watch_after: int | None = None
        self.changed = asyncio.Condition()
        self._runs: set[asyncio.Task[None]] = set()
        self.add_account("admin", 0, admin=True, key=admin_key)

    def add_account(self, name: str, credit: int, admin: bool = False, key: str = "") -> str:
        key = key or secrets.token_hex(16)
        self.accounts[name] = admin_pb2.Account(name=name, balance=credit, is_admin=admin)
        self.keys[key] = name
        return key

    # --- helpers ---------------------------------------------------------------------------

    def _caller(self, context: Context, admin: bool = False) -> admin_pb2.Account:
        auth = dict(context.invocation_metadata() or ()).get("authorization", "")
        if not auth:
            raise Abort(grpc.StatusCode.UNAUTHENTICATED, "NO_API_KEY", "no API key sent")
        name = self.keys.get(str(auth).removeprefix("Bearer "))
        if name is None:
            raise Abort(grpc.StatusCode.UNAUTHENTICATED, "BAD_API_KEY", "unknown API key")
        account = self.accounts[name]
        if admin and not account.is_admin:
            raise Abort(grpc.StatusCode.PERMISSION_DENIED, "NOT_ADMIN", f"{name} is no admin")
        return account

    def _job(self, job_id: str, context: Context) -> FakeJob:
        self._caller(context)
        job = self.jobs.get(job_id)
        if job is None:
            raise Abort(grpc.StatusCode.NOT_FOUND, "JOB_NOT_FOUND", f"no job {job_id!r}")
        return job

    def _post(self, tx: str, job_id: str, *moves: tuple[str, int, str]) -> None:
        for account, amount, reason in moves:
            entry = admin_pb2.LedgerEntry(
                transaction_id=tx, account=account, amount=amount, reason=reason, job_id=job_id
            )
            self.ledger.append(entry)
            if account in self.accounts:
                self.accounts[account].balance += amount

    async def _changed(self, job: FakeJob) -> None:
        async with self.changed:
            job.version += 1
            self.changed.notify_all()

    async def stop(self) -> None:
        for run in self._runs:
            run.cancel()
        await asyncio.gather(*self._runs, return_exceptions=True)

    # --- ClientService ---------------------------------------------------------------------

    @aborts
    async def GetInfo(
        self, request: client_pb2.GetInfoRequest, context: Context
    ) -> client_pb2.GetInfoResponse:
        self._caller(context)
        kinds = [
            client_pb2.JobKindInfo(name=k, description=d, price_credit=PRICE, price_units=1)
            for k, d in KINDS.items()
        ]
        return client_pb2.GetInfoResponse(
            version="fake",
            kinds=kinds,
            max_blob_size=1 << 30,
            coordinator_public_key=self.coordinator_signer.public_key,
        )

    @aborts
    async def GetNodeCredit(
        self, request: client_pb2.GetNodeCreditRequest, context: Context
    ) -> client_pb2.GetNodeCreditResponse:
        self._caller(context)
        raise Abort(grpc.StatusCode.NOT_FOUND, "NODE_NOT_FOUND", "the fake has no nodes you own")

    @aborts
    async def GetAccount(
        self, request: client_pb2.GetAccountRequest, context: Context
    ) -> client_pb2.GetAccountResponse:
        a = self._caller(context)
        return client_pb2.GetAccountResponse(name=a.name, balance=a.balance, is_admin=a.is_admin)

    @aborts
    async def SubmitJob(
        self, request: client_pb2.SubmitJobRequest, context: Context
    ) -> client_pb2.SubmitJobResponse:
        account = self._caller(context)
        key = (account.name, request.idempotency_key)
        spec = request.spec.SerializeToString(deterministic=True)
        if request.idempotency_key and key in self.submits:
            job_id, first = self.submits[key]
            if first != spec:  # as the coordinator: a key names one spec
                raise Abort(
                    grpc.StatusCode.ALREADY_EXISTS,
                    "IDEMPOTENCY_KEY_REUSED",
                    f"idempotency key {request.idempotency_key!r} was used for job {job_id}, "
                    "whose spec differs: submit with a new key, or resend the same spec",
                )
            return client_pb2.SubmitJobResponse(job=self.jobs[job_id].msg)
        job = self._create(request, account)
        if request.idempotency_key:
            self.submits[key] = (job.msg.job_id, spec)
        run = asyncio.create_task(self._run(job))
        self._runs.add(run)
        run.add_done_callback(self._runs.discard)
        return client_pb2.SubmitJobResponse(job=job.msg)

    @aborts
    async def EstimateJob(
        self, request: client_pb2.EstimateJobRequest, context: Context
    ) -> client_pb2.EstimateJobResponse:
        """As the coordinator: a flat PRICE per task, one paid result each; nothing stored."""
        account = self._caller(context)
        spec = request.spec
        if spec.kind not in KINDS:
            raise Abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "UNKNOWN_KIND",
                f"unknown job kind {spec.kind!r}; known kinds: {', '.join(sorted(KINDS))}",
            )
        tasks = int(json.loads(spec.params or b"{}").get("tasks", 1))
        return client_pb2.EstimateJobResponse(
            tasks=tasks,
            work_units=tasks,
            work_unit="task",
            price_credit=PRICE,
            price_units=1,
            exact_credit=float(tasks * PRICE),
            credit_per_pass=tasks * PRICE,
            max_paid_results=1,
            max_held=tasks * PRICE,
            policy="single result",
            balance=account.balance,
        )

    def _create(self, request: client_pb2.SubmitJobRequest, account: admin_pb2.Account) -> FakeJob:
        spec = request.spec
        if spec.kind not in KINDS:
            known = ", ".join(sorted(KINDS))
            raise Abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "UNKNOWN_KIND",
                f"unknown job kind {spec.kind!r}; known kinds: {known}",
            )
        params = json.loads(spec.params or b"{}")
        tasks = int(params.get("tasks", 1))
        if spec.kind == "checksum" and spec.inputs.get("data") not in self.blobs.blobs:
            raise Abort(grpc.StatusCode.INVALID_ARGUMENT, "BAD_PARAMS", "input 'data' missing")
        held = tasks * PRICE
        if account.balance < held:
            raise Abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                "INSUFFICIENT_CREDIT",
                f"job costs {held}, balance is {account.balance}",
            )
        job_id = f"job-{len(self.jobs) + 1}"
        msg = common_pb2.Job(
            job_id=job_id,
            kind=spec.kind,
            name=spec.name,
            owner=account.name,
            state=common_pb2.JOB_STATE_QUEUED,
            cost_held=held,
            created_at=now(),
            counts=common_pb2.JobCounts(total=tasks, queued=tasks),
        )
        job = FakeJob(msg=msg, params=params, inputs=dict(spec.inputs))
        self.jobs[job_id] = job
        self._post(
            f"{job_id}-hold", job_id, (account.name, -held, "hold"), ("escrow", held, "hold")
        )
        return job

    async def _run(self, job: FakeJob) -> None:
        job.msg.state = common_pb2.JOB_STATE_RUNNING
        for index in range(job.msg.counts.total):
            await asyncio.sleep(self.tick)
            if job.msg.state in FINAL:
                return
            job.results.append(self._execute(job, index))
            await self._changed(job)
        self._finish(
            job,
            common_pb2.JOB_STATE_FAILED
            if job.msg.counts.failed
            else common_pb2.JOB_STATE_SUCCEEDED,
        )
        await self._changed(job)

    def _outputs(self, job: FakeJob, index: int) -> dict[str, bytes]:
        if job.msg.kind == "echo":
            return {"data": str(job.params.get("data", "")).encode()}
        data = self.blobs.blobs[job.inputs["data"]]
        n = job.msg.counts.total
        part = data[index * len(data) // n : (index + 1) * len(data) // n]
        return {"sha256": sha256_hex(part).encode()}

    def _execute(self, job: FakeJob, index: int) -> client_pb2.TaskResult:
        task_id = f"{job.msg.job_id}-t{index}"
        counts = job.msg.counts
        counts.queued -= 1
        if index in self.fail_indices:
            counts.failed += 1
            return client_pb2.TaskResult(
                task_id=task_id, index=index, state=common_pb2.TASK_STATE_FAILED, error="boom"
            )
        outputs = self._outputs(job, index)
        refs = [
            common_pb2.OutputRef(name=k, digest=sha256_hex(v), size=len(v))
            for k, v in outputs.items()
        ]
        statement = common_pb2.ResultStatement(
            job_id=job.msg.job_id,
            task_id=task_id,
            attempt_id=f"{task_id}-a1",
            node_id=self.signer.node_id,
            outputs=refs,
        ).SerializeToString()
        receipt = make_receipts(
            [statement], sign_batch(self.signer, [statement]), self.signer.public_key
        )[0]
        validation = common_pb2.Validation(
            job_id=job.msg.job_id,
            task_id=task_id,
            attempt_id=f"{task_id}-a1",
            node_id=self.signer.node_id,
            method=common_pb2.VALIDATION_METHOD_SINGLE,
            agreeing_nodes=[self.signer.node_id],
            detail="fake coordinator",
            credit=PRICE,
        )
        receipt = countersign(self.coordinator_signer, receipt, validation)
        for value in outputs.values():
            if len(value) > INLINE_LIMIT:
                self.blobs.blobs[sha256_hex(value)] = value
        counts.succeeded += 1
        job.msg.cost_spent += PRICE
        self._post(
            f"{task_id}-pay",
            job.msg.job_id,
            ("escrow", -PRICE, "pay"),
            (self.signer.node_id, PRICE, "pay"),
        )
        inline = {sha256_hex(v): v for v in outputs.values() if len(v) <= INLINE_LIMIT}
        return client_pb2.TaskResult(
            task_id=task_id,
            index=index,
            state=common_pb2.TASK_STATE_SUCCEEDED,
            node_id=self.signer.node_id,
            outputs=refs,
            receipt=receipt,
            inline_outputs=inline,
        )

    def _finish(self, job: FakeJob, state: int) -> None:
        job.msg.state = state  # type: ignore[assignment]
        job.msg.finished_at.CopyFrom(now())
        refund = job.msg.cost_held - job.msg.cost_spent
        if refund:
            moves = (("escrow", -refund, "refund"), (job.msg.owner, refund, "refund"))
            self._post(f"{job.msg.job_id}-refund", job.msg.job_id, *moves)

    @aborts
    async def GetJob(
        self, request: client_pb2.GetJobRequest, context: Context
    ) -> client_pb2.GetJobResponse:
        return client_pb2.GetJobResponse(job=self._job(request.job_id, context).msg)

    @aborts
    async def ListJobs(
        self, request: client_pb2.ListJobsRequest, context: Context
    ) -> client_pb2.ListJobsResponse:
        self._caller(context)
        jobs = [j.msg for j in self.jobs.values()][-(request.limit or 50) :]
        return client_pb2.ListJobsResponse(jobs=jobs)

    @aborts
    async def CancelJob(
        self, request: client_pb2.CancelJobRequest, context: Context
    ) -> client_pb2.CancelJobResponse:
        job = self._job(request.job_id, context)
        if job.msg.state not in FINAL:
            job.msg.counts.cancelled = job.msg.counts.queued
            job.msg.counts.queued = 0
            self._finish(job, common_pb2.JOB_STATE_CANCELLED)
            await self._changed(job)
        return client_pb2.CancelJobResponse(job=job.msg)

    async def WatchJob(
        self, request: client_pb2.WatchJobRequest, context: Context
    ) -> AsyncIterator[client_pb2.WatchJobResponse]:
        try:
            job = self._job(request.job_id, context)
        except Abort as err:
            await abort(context, err)
            return
        cut, self.cut_watch_after = self.cut_watch_after, None
        seen, sent = -1, 0
        while True:
            seen, snapshot = await self._next_change(job, seen)
            if cut is not None and sent >= cut:
                await abort(context, Abort(grpc.StatusCode.UNAVAILABLE, "UNAVAILABLE", "cut"))
            yield client_pb2.WatchJobResponse(job=snapshot)
            sent += 1
            if snapshot.state in FINAL:
                return

    async def _next_change(self, job: FakeJob, seen: int) -> tuple[int, common_pb2.Job]:
        """The job once its version differs from `seen` (at once for a new watcher)."""
        async with self.changed:
            await self.changed.wait_for(lambda: job.version != seen)
            snapshot = common_pb2.Job()
            snapshot.CopyFrom(job.msg)
            return job.version, snapshot

    @aborts
    async def GetJobResults(
        self, request: client_pb2.GetJobResultsRequest, context: Context
    ) -> client_pb2.GetJobResultsResponse:
        job = self._job(request.job_id, context)
        # as the coordinator: a token is the index of the last task of the page before
        start = int(request.page_token) + 1 if request.page_token else 0
        end = start + (request.page_size or 3)
        token = str(end - 1) if end < len(job.results) else ""
        return client_pb2.GetJobResultsResponse(
            results=job.results[start:end], next_page_token=token
        )
