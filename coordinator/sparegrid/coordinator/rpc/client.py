"""ClientService: a client's own jobs, nothing else."""

import asyncio
import contextlib
import functools
import re
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

from grpc import aio

from sparegrid.coordinator.app import App
from sparegrid.coordinator.domain import Account, Job, TaskState, escrow_account, node_account
from sparegrid.coordinator.errors import CoordinatorError, ErrorKind, invalid, not_found
from sparegrid.coordinator.rpc import convert
from sparegrid.coordinator.rpc.auth import account_of, caller_of, keyless
from sparegrid.coordinator.rpc.errors import streaming, unary
from sparegrid.coordinator.services.calls import page_cost
from sparegrid.coordinator.services.estimate import estimate
from sparegrid.coordinator.services.jobs import Draft
from sparegrid.coordinator.services.webhooks import account_secret
from sparegrid.coordinator.states import FINAL_JOB_STATES
from sparegrid.v1 import client_pb2, client_pb2_grpc, common_pb2

Ctx = aio.ServicerContext[Any, Any]
MAX_PAGE = 1000
# inline outputs one page of results carries (at least one result, of at most
# MAX_INLINE_RESULT): a reply stays under the 64 MiB a message may hold
PAGE_INLINE_BYTES = 32 << 20
WATCH_MIN_INTERVAL = 0.1  # at most ten updates a second per watcher
WATCH_MAX_INTERVAL = 5.0  # and at least one every five seconds
# watches one account may hold open at once on this coordinator: each is a stream and a
# read of its job every few seconds (one account held 16,000: half a core, 500 MB)
MAX_WATCHES = 256
# tokens an estimate takes of its account's calls (services/calls.py): it plans the whole
# job, up to a million tasks, as a submit does
ESTIMATE_COST = 10


class ClientServicer(client_pb2_grpc.ClientServiceServicer):
    def __init__(self, app: App, version: str) -> None:
        self.app = app
        self.version = version
        self._watches: Counter[str] = Counter()  # account id -> WatchJob calls open

    def _caller(self, context: Ctx, cost: int = 1) -> Account:
        """The caller's account, `cost` taken from its calls (services/calls.py)."""
        return caller_of(context, self.app.accounts, self.app.calls, cost)

    def _job_pb(self, job: Job, owner: Account, webhook: bool = False) -> common_pb2.Job:
        """The job for its owner; with its webhook call where `webhook` (a read of the
        store: not for lists, nor for each update of a watch)."""
        jobs = self.app.jobs
        pb = convert.job_to_pb(job, jobs.counts(job), owner.name, jobs.waiting(job.id))
        delivery = self.app.webhooks.latest(job) if webhook else None
        if delivery is not None:
            max_attempts = self.app.webhooks.config.max_attempts
            pb.webhook.CopyFrom(convert.delivery_to_pb(delivery, max_attempts))
        return pb

    @unary
    async def GetInfo(
        self, request: client_pb2.GetInfoRequest, context: Ctx
    ) -> client_pb2.GetInfoResponse:
        self._caller(context)
        kinds = []
        for k in self.app.jobs.kinds.values():
            price = self.app.jobs.price(k.name)
            kinds.append(
                client_pb2.JobKindInfo(
                    name=k.name,
                    description=k.description,
                    price_credit=price.credit,
                    price_units=price.units,
                    work_unit=getattr(k, "work_unit", "unit"),
                )
            )
        return client_pb2.GetInfoResponse(
            version=self.version,
            kinds=kinds,
            max_blob_size=self.app.blobs.max_blob_size,
            coordinator_public_key=self.app.signer.public_key,
        )

    @unary
    async def GetNodeCredit(
        self, request: client_pb2.GetNodeCreditRequest, context: Ctx
    ) -> client_pb2.GetNodeCreditResponse:
        account = self._caller(context, page_cost(min(request.limit or 100, 10_000)))
        node = self.app.store.get_node(request.node_id) if request.node_id else None
        if node is None or (node.owner != account.name and not account.is_admin):
            raise not_found(
                "NODE_NOT_FOUND",
                f"no node {request.node_id!r} owned by account {account.name!r}; a worker "
                "declares its owner with SPAREGRID_OWNER_KEY (see `sparegrid worker run -h`)",
            )
        ledger_account = node_account(node.id)
        entries = self.app.store.ledger_entries(
            ledger_account, "", min(request.limit or 100, 10_000)
        )
        rep = self.app.reputations.get(node.id)
        return client_pb2.GetNodeCreditResponse(
            node_id=node.id,
            owner=node.owner,
            balance=self.app.store.balance(ledger_account),
            entries=[
                client_pb2.CreditEntry(
                    transaction_id=e.transaction_id,
                    amount=e.amount,
                    reason=e.reason,
                    job_id=e.job_id,
                    task_id=e.task_id,
                    created_at=convert.timestamp(e.created_at),
                )
                for e in entries
            ],
            standing=rep.standing.value,
            standing_reason=rep.reason,
            validated=rep.validated,
            invalid=rep.invalid,
        )

    @unary
    async def EstimateJob(
        self, request: client_pb2.EstimateJobRequest, context: Ctx
    ) -> client_pb2.EstimateJobResponse:
        account = self._caller(context, ESTIMATE_COST)
        spec = convert.spec_from_pb(client_pb2.SubmitJobRequest(spec=request.spec))
        spec.idempotency_key = ""  # an estimate never returns (or names) a job
        jobs = self.app.jobs
        draft = await self.app.submitter.prepare(account, spec)
        assert isinstance(draft, Draft)  # no idempotency key: never a recorded job
        found = await asyncio.to_thread(lambda: estimate(jobs.plan(draft)))
        kind = jobs.kinds[spec.kind]
        return client_pb2.EstimateJobResponse(
            tasks=found.tasks,
            work_units=found.work_units,
            work_unit=getattr(kind, "work_unit", "unit"),
            price_credit=found.price_credit,
            price_units=found.price_units,
            exact_credit=found.exact_credit,
            credit_per_pass=found.credit_per_pass,
            max_paid_results=found.max_paid_results,
            max_held=found.max_held,
            policy=found.policy,
            balance=self.app.accounts.balance(account),
            rounding=found.rounding,
            waiting=jobs.unmet(draft.spec),
        )

    @unary
    async def GetAccount(
        self, request: client_pb2.GetAccountRequest, context: Ctx
    ) -> client_pb2.GetAccountResponse:
        account = self._caller(context)
        held = sum(
            self.app.store.balance(escrow_account(a.job.id))
            for a in self.app.scheduler.jobs.values()
            if a.job.account_id == account.id
        )
        return client_pb2.GetAccountResponse(
            name=account.name,
            balance=self.app.accounts.balance(account),
            is_admin=account.is_admin,
            stake=self.app.identities.stake(account.name),
            held=held,
            webhook_secret=account_secret(self.app.signer, account.id).hex(),
        )

    @unary
    async def Signup(
        self, request: client_pb2.SignupRequest, context: Ctx
    ) -> client_pb2.SignupResponse:
        address = keyless(context, "/sparegrid.v1.ClientService/Signup")
        invites = self.app.invites
        invites.limiter.admit(address)
        done = await self.app.call(lambda: invites.signup(request.code, request.name))
        return client_pb2.SignupResponse(
            name=done.account.name,
            balance=self.app.accounts.balance(done.account),
            api_key=done.api_key,
        )

    @unary
    async def Stake(
        self, request: client_pb2.StakeRequest, context: Ctx
    ) -> client_pb2.StakeResponse:
        account = self._caller(context)
        identities, amount = self.app.identities, request.amount
        key = f"{account.id}:{convert.idempotency_key(request.idempotency_key)}"
        if amount >= 0:
            stake = await self.app.call(lambda: identities.add_stake(account.name, amount, key))
        else:
            stake = await self.app.call(
                lambda: identities.release_stake(account.name, -amount, key)
            )
        self.app.kick()  # a stake may make the owner's nodes vetted
        return client_pb2.StakeResponse(stake=stake, balance=self.app.accounts.balance(account))

    @unary
    async def RetryJob(
        self, request: client_pb2.RetryJobRequest, context: Ctx
    ) -> client_pb2.RetryJobResponse:
        account = self._caller(context)
        before = self.app.jobs.counts(self.app.jobs.get(account, request.job_id))
        job = await self.app.submitter.retry(account, request.job_id)
        retried = before.get(TaskState.FAILED, 0) + before.get(TaskState.CANCELLED, 0)
        return client_pb2.RetryJobResponse(
            job=self._job_pb(job, account, webhook=True), retried=retried
        )

    @unary
    async def SubmitJob(
        self, request: client_pb2.SubmitJobRequest, context: Ctx
    ) -> client_pb2.SubmitJobResponse:
        account = self._caller(context)
        spec = convert.spec_from_pb(request)
        job = await self.app.submit(account, spec)
        return client_pb2.SubmitJobResponse(job=self._job_pb(job, account))

    @unary
    async def GetJob(
        self, request: client_pb2.GetJobRequest, context: Ctx
    ) -> client_pb2.GetJobResponse:
        account = self._caller(context)
        job = self.app.jobs.get(account, request.job_id)
        disputes = [convert.dispute_to_pb(d) for d in self.app.store.get_disputes(job.id)]
        pb = self._job_pb(job, account, webhook=True)
        pb.inputs.update(job.inputs)  # GetJob only: a generate job is re-attached by these
        pb.params = job.params
        return client_pb2.GetJobResponse(job=pb, disputes=disputes)

    @unary
    async def ListJobs(
        self, request: client_pb2.ListJobsRequest, context: Ctx
    ) -> client_pb2.ListJobsResponse:
        account = self._caller(context, page_cost(min(request.limit or 100, MAX_PAGE)))
        jobs = self.app.jobs.list_jobs(account, request.limit or 100)
        return client_pb2.ListJobsResponse(jobs=[self._job_pb(j, account) for j in jobs])

    @unary
    async def CancelJob(
        self, request: client_pb2.CancelJobRequest, context: Ctx
    ) -> client_pb2.CancelJobResponse:
        account = self._caller(context)
        job = await self.app.call(lambda: self.app.jobs.cancel(account, request.job_id))
        return client_pb2.CancelJobResponse(job=self._job_pb(job, account, webhook=True))

    @streaming
    async def WatchJob(
        self, request: client_pb2.WatchJobRequest, context: Ctx
    ) -> AsyncIterator[client_pb2.WatchJobResponse]:
        account = account_of(context, self.app.accounts)
        job = self.app.jobs.get(account, request.job_id)
        if self._watches[account.id] >= MAX_WATCHES:
            raise CoordinatorError(
                ErrorKind.EXHAUSTED,
                "TOO_MANY_WATCHES",
                f"account {account.name!r} is watching {MAX_WATCHES} jobs already, the most "
                "one account may at once; end a watch first, or poll with GetJob/ListJobs",
            )
        event = self.app.watch(job.id)
        self._watches[account.id] += 1

        def look(account: Account) -> tuple[Account, Job, common_pb2.Job]:
            """In a group commit, so the loop never waits for one under way to read, and
            the watcher hears only what is durable."""
            account = self.app.accounts.recheck(account)  # its key revoked: it ends
            job = self.app.jobs.get(account, request.job_id)
            return account, job, self._job_pb(job, account)

        try:
            last = None
            while True:
                event.clear()
                account, job, snapshot = await self.app.call(functools.partial(look, account))
                if snapshot != last:
                    yield client_pb2.WatchJobResponse(job=snapshot)
                    last = snapshot
                if job.state in FINAL_JOB_STATES:
                    return
                await asyncio.sleep(WATCH_MIN_INTERVAL)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), WATCH_MAX_INTERVAL)
        finally:
            self.app.unwatch(job.id, event)
            self._watches[account.id] -= 1
            if not self._watches[account.id]:
                del self._watches[account.id]

    @unary
    async def GetJobResults(
        self, request: client_pb2.GetJobResultsRequest, context: Ctx
    ) -> client_pb2.GetJobResultsResponse:
        account = self._caller(context, page_cost(min(request.page_size or MAX_PAGE, MAX_PAGE)))
        size = min(request.page_size or MAX_PAGE, MAX_PAGE)
        after = _page_start(request.page_token)
        tasks = self.app.jobs.results(account, request.job_id, after, size)
        results: list[client_pb2.TaskResult] = []
        carried = 0
        for task in tasks:
            inline = {}
            for ref in task.outputs:
                data = self.app.store.get_inline_blob(ref.digest)
                if data is not None:
                    inline[ref.digest] = data
            carried += sum(map(len, inline.values()))
            if results and carried > PAGE_INLINE_BYTES:  # the rest on the next page
                break
            results.append(convert.task_result_to_pb(task, inline))
        more = len(results) < len(tasks) or len(tasks) == size
        token = str(tasks[len(results) - 1].index) if results and more else ""
        return client_pb2.GetJobResultsResponse(results=results, next_page_token=token)

    @unary
    async def GetTaskLogs(
        self, request: client_pb2.GetTaskLogsRequest, context: Ctx
    ) -> client_pb2.GetTaskLogsResponse:
        account = self._caller(context)
        index = None if request.all_tasks else request.task_index
        offset = max(_page_start(request.page_token), 0)  # logs of the pages before
        logs = self.app.jobs.logs(account, request.job_id, index, offset, LOGS_PAGE)
        token = str(offset + len(logs)) if len(logs) == LOGS_PAGE else ""
        return client_pb2.GetTaskLogsResponse(
            logs=[convert.attempt_log_to_pb(x) for x in logs], next_page_token=token
        )


# Logs in one GetTaskLogs page: at most 32 x 64 KiB of text (a job keeps 1,000), so that
# no reply nears gRPC's message limit, and no call reads them all on the event loop.
LOGS_PAGE = 32

# A page token is the index of the last task of the page before: ASCII digits, and no
# index reaches 2^31 (a job has at most MAX_TASKS_PER_JOB tasks). Anything else is refused
# before it is converted: int() of a 5,000-digit string raises, a 20-digit one overflows a
# SQL integer, and str.isdigit() admits digits int() rejects ("²") or other scripts'.
_PAGE_TOKEN = re.compile(r"[0-9]{1,10}")


def _page_start(token: str) -> int:
    if not token:
        return -1
    if not _PAGE_TOKEN.fullmatch(token) or int(token) >= 1 << 31:
        shown = token if len(token) <= 24 else token[:20] + "..."
        raise invalid(
            "BAD_PAGE_TOKEN",
            f"page token {shown!r} was not issued by this server: pass the "
            "next_page_token of the page before, or none for the first page",
        )
    return int(token)
