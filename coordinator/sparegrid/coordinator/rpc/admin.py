"""AdminService: accounts, credit, nodes and the ledger, for admin accounts only.

Every change an admin makes is recorded as an `admin` event in the transaction that makes
it, naming the admin (`by`), the action and what it acted on: `sparegrid admin events
--kind admin` is the operators' audit trail. No key or invitation code is ever in one.
"""

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from grpc import aio

from sparegrid.coordinator.app import App
from sparegrid.coordinator.domain import (
    MAX_BIGINT,
    Account,
    Event,
    Job,
    Node,
    client_account,
    node_account,
)
from sparegrid.coordinator.errors import CoordinatorError, ErrorKind, invalid, not_found
from sparegrid.coordinator.rpc import convert
from sparegrid.coordinator.rpc.auth import admin_of
from sparegrid.coordinator.rpc.errors import streaming, unary
from sparegrid.coordinator.services.events import EventKind, kind_names, kinds_named
from sparegrid.v1 import admin_pb2, admin_pb2_grpc, common_pb2
from sparegrid.wire.codes import NODE_STATES, NodeState

Ctx = aio.ServicerContext[Any, Any]
EVENTS_PAGE = 500  # events per message
FOLLOW_POLL_SECONDS = 1.0  # a follower also reads the store this often (other coordinators)
T = TypeVar("T")


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    def __init__(self, app: App) -> None:
        self.app = app

    def _audit(self, operator: Account, action: str, target: str, what: str, **data: Any) -> None:
        """Records what an admin did, in the caller's transaction."""
        self.app.events.emit(
            EventKind.ADMIN,
            f"{operator.name}: {what}",
            account=operator.name,
            action=action,
            by=operator.name,
            target=target,
            **data,
        )

    async def _audited(
        self,
        operator: Account,
        action: str,
        fn: Callable[[], T],
        said: Callable[[T], tuple[str, str]],
    ) -> T:
        """Runs `fn` in the next group commit with its `admin` event: `said` gives what
        it acted on, and the words for it."""

        def run() -> T:
            result = fn()
            self._audit(operator, action, *said(result))
            return result

        return await self.app.call(run)

    @unary
    async def CreateAccount(
        self, request: admin_pb2.CreateAccountRequest, context: Ctx
    ) -> admin_pb2.CreateAccountResponse:
        operator = admin_of(context, self.app.accounts)
        # not in a group commit: a name taken is a conflict there, failing the whole group
        with self.app.store.transaction():
            account, key = self.app.accounts.create(
                request.name, request.initial_credit, request.is_admin
            )
            admin = " admin" if account.is_admin else ""
            self._audit(
                operator,
                "account.create",
                account.name,
                f"created{admin} account {account.name!r} with {request.initial_credit} credit",
                is_admin=account.is_admin,
                credit=request.initial_credit,
            )
        balance = self.app.accounts.balance(account)
        return admin_pb2.CreateAccountResponse(
            account=convert.account_to_pb(account, balance), api_key=key
        )

    @unary
    async def ListAccounts(
        self, request: admin_pb2.ListAccountsRequest, context: Ctx
    ) -> admin_pb2.ListAccountsResponse:
        admin_of(context, self.app.accounts)
        balances = self.app.store.balances("client:")
        accounts = [
            convert.account_to_pb(a, balances.get(client_account(a.name), 0))
            for a in self.app.store.list_accounts()
        ]
        return admin_pb2.ListAccountsResponse(accounts=accounts)

    @unary
    async def GrantCredit(
        self, request: admin_pb2.GrantCreditRequest, context: Ctx
    ) -> admin_pb2.GrantCreditResponse:
        operator = admin_of(context, self.app.accounts)
        key = convert.idempotency_key(request.idempotency_key)
        with self.app.store.transaction():
            account, posted = self.app.accounts.grant(
                request.name, request.amount, key, request.reason
            )
            if posted:  # a grant made again with its key books nothing
                self._audit(
                    operator,
                    "credit.grant",
                    account.name,
                    f"granted {request.amount} credit to {account.name!r}"
                    f" ({request.reason or 'grant'})",
                    amount=request.amount,
                )
        balance = self.app.accounts.balance(account)
        return admin_pb2.GrantCreditResponse(account=convert.account_to_pb(account, balance))

    @unary
    async def ListNodes(
        self, request: admin_pb2.ListNodesRequest, context: Ctx
    ) -> admin_pb2.ListNodesResponse:
        admin_of(context, self.app.accounts)
        balances = self.app.store.balances("node:")
        return admin_pb2.ListNodesResponse(
            nodes=[self._node_pb(n, balances) for n in self.app.store.list_nodes()]
        )

    def _node_pb(self, node: Node, balances: dict[str, int] | None = None) -> admin_pb2.Node:
        session = self.app.scheduler.sessions.get(node.id)
        heard = self.app.seen.get(node.id)  # heartbeats are in memory until written in bulk
        if heard is not None:
            node.last_seen = max(node.last_seen, heard)
        if session is None:
            state = NODE_STATES[NodeState.OFFLINE]
        elif session.draining:
            state = NODE_STATES[NodeState.DRAINING]
        else:
            state = NODE_STATES[NodeState.ONLINE]
        account = node_account(node.id)
        credit = (
            balances.get(account, 0) if balances is not None else self.app.store.balance(account)
        )
        reputations, scheduler = self.app.reputations, self.app.scheduler
        view = convert.NodeView(
            state,
            credit,
            reputations.get(node.id),
            reputations.check_rate(node.id),
            self.app.identities.why_not_vetted(node.owner),
            scheduler.window(node.id),
            len(session.leases) if session is not None else 0,
        )
        return convert.node_to_pb(node, view)

    def _node(self, node_id: str) -> Node:
        node = self.app.store.get_node(node_id) if node_id else None
        if node is None:
            raise not_found(
                "NODE_NOT_FOUND", f"no node {node_id!r}; `sparegrid admin nodes` lists them"
            )
        return node

    @unary
    async def BanNode(
        self, request: admin_pb2.BanNodeRequest, context: Ctx
    ) -> admin_pb2.BanNodeResponse:
        operator = admin_of(context, self.app.accounts)
        node = self._node(request.node_id)
        reason = request.reason[:500] or "banned by the operator"
        await self._audited(
            operator,
            "node.ban",
            lambda: self.app.reputations.ban(node.id, reason),
            lambda _: (node.id, f"banned node {node.id} ({reason})"),
        )
        return admin_pb2.BanNodeResponse(node=self._node_pb(node))

    @unary
    async def ReinstateNode(
        self, request: admin_pb2.ReinstateNodeRequest, context: Ctx
    ) -> admin_pb2.ReinstateNodeResponse:
        operator = admin_of(context, self.app.accounts)
        node = self._node(request.node_id)
        reason = request.reason[:500] or "reinstated by the operator"
        await self._audited(
            operator,
            "node.reinstate",
            lambda: self.app.reputations.reinstate(node.id, reason),
            lambda _: (node.id, f"reinstated node {node.id} ({reason})"),
        )
        self.app.kick()
        return admin_pb2.ReinstateNodeResponse(node=self._node_pb(node))

    @unary
    async def ApproveNode(
        self, request: admin_pb2.ApproveNodeRequest, context: Ctx
    ) -> admin_pb2.ApproveNodeResponse:
        operator = admin_of(context, self.app.accounts)
        node = self._node(request.node_id)
        reason = request.reason[:500] or "approved by the operator"
        try:
            await self._audited(
                operator,
                "node.approve",
                lambda: self.app.reputations.approve(node.id, reason),
                lambda _: (node.id, f"approved node {node.id} ({reason})"),
            )
        except ValueError as exc:
            raise CoordinatorError(ErrorKind.PRECONDITION, "NOT_PENDING", str(exc)) from None
        self.app.kick()
        return admin_pb2.ApproveNodeResponse(node=self._node_pb(node))

    @unary
    async def CheckLedger(
        self, request: admin_pb2.CheckLedgerRequest, context: Ctx
    ) -> admin_pb2.CheckLedgerResponse:
        admin_of(context, self.app.accounts)
        report = self.app.ledger.check()
        return admin_pb2.CheckLedgerResponse(
            balanced=report.balanced,
            problems=report.problems,
            transactions=report.transactions,
            entries=report.entries,
            total=report.total,
        )

    @unary
    async def ListLedgerEntries(
        self, request: admin_pb2.ListLedgerEntriesRequest, context: Ctx
    ) -> admin_pb2.ListLedgerEntriesResponse:
        admin_of(context, self.app.accounts)
        entries = self.app.store.ledger_entries(
            convert.ledger_account(request.account),
            request.job_id,
            min(request.limit or 100, 10_000),
        )
        disputes = self.app.store.get_disputes(request.job_id) if request.job_id else []
        return admin_pb2.ListLedgerEntriesResponse(
            entries=[convert.entry_to_pb(e) for e in entries],
            disputes=[convert.dispute_to_pb(d) for d in disputes],
        )

    def _account_pb(self, account: Account) -> admin_pb2.Account:
        return convert.account_to_pb(account, self.app.accounts.balance(account))

    @unary
    async def SetAccountDisabled(
        self, request: admin_pb2.SetAccountDisabledRequest, context: Ctx
    ) -> admin_pb2.SetAccountDisabledResponse:
        operator = admin_of(context, self.app.accounts)
        verb = "disable" if request.disabled else "enable"
        account = await self._audited(
            operator,
            f"account.{verb}",
            lambda: self.app.accounts.set_disabled(request.name, request.disabled),
            lambda a: (a.name, f"{verb}d account {a.name!r}"),
        )
        if account.disabled:  # its nodes' sessions end; reconnecting, they are refused
            for session in list(self.app.scheduler.sessions.values()):
                if session.node.owner == account.name:
                    session.sink.close()
        return admin_pb2.SetAccountDisabledResponse(account=self._account_pb(account))

    @unary
    async def RotateKey(
        self, request: admin_pb2.RotateKeyRequest, context: Ctx
    ) -> admin_pb2.RotateKeyResponse:
        operator = admin_of(context, self.app.accounts)
        account, key = await self._audited(
            operator,
            "key.rotate",
            lambda: self.app.accounts.rotate_key(request.name),
            lambda made: (made[0].name, f"rotated the API key of account {made[0].name!r}"),
        )
        return admin_pb2.RotateKeyResponse(account=self._account_pb(account), api_key=key)

    @unary
    async def RevokeKey(
        self, request: admin_pb2.RevokeKeyRequest, context: Ctx
    ) -> admin_pb2.RevokeKeyResponse:
        operator = admin_of(context, self.app.accounts)
        account = await self._audited(
            operator,
            "key.revoke",
            lambda: self.app.accounts.revoke_key(request.name),
            lambda a: (a.name, f"revoked the API key of account {a.name!r}"),
        )
        return admin_pb2.RevokeKeyResponse(account=self._account_pb(account))

    @unary
    async def DebitCredit(
        self, request: admin_pb2.DebitCreditRequest, context: Ctx
    ) -> admin_pb2.DebitCreditResponse:
        operator = admin_of(context, self.app.accounts)
        key = convert.idempotency_key(request.idempotency_key)

        def debit() -> Account:
            account, posted = self.app.accounts.debit(
                request.name, request.amount, key, request.reason
            )
            if posted:  # a debit made again with its key books nothing
                what = f"debited {request.amount} credit from {account.name!r}"
                what += f" ({request.reason or 'debit'})"
                self._audit(operator, "credit.debit", account.name, what, amount=request.amount)
            return account

        account = await self.app.call(debit)
        return admin_pb2.DebitCreditResponse(account=self._account_pb(account))

    def _job_pb(self, job: Job, owners: dict[str, str]) -> common_pb2.Job:
        jobs = self.app.jobs
        owner = owners.get(job.account_id, job.account_id)
        return convert.job_to_pb(job, jobs.counts(job), owner, jobs.waiting(job.id))

    def _owners(self) -> dict[str, str]:
        return {a.id: a.name for a in self.app.store.list_accounts()}

    @unary
    async def ListAllJobs(
        self, request: admin_pb2.ListAllJobsRequest, context: Ctx
    ) -> admin_pb2.ListAllJobsResponse:
        admin_of(context, self.app.accounts)
        account = self.app.accounts.get(request.account) if request.account else None
        states = convert.job_states_from_pb(request.states)
        jobs = self.app.jobs.list_all(account, states, request.limit or 100)
        owners = self._owners()
        return admin_pb2.ListAllJobsResponse(jobs=[self._job_pb(j, owners) for j in jobs])

    @unary
    async def CancelAnyJob(
        self, request: admin_pb2.CancelAnyJobRequest, context: Ctx
    ) -> admin_pb2.CancelAnyJobResponse:
        operator = admin_of(context, self.app.accounts)
        reason = request.reason[:500] or f"cancelled by operator {operator.name!r}"
        job = await self._audited(
            operator,
            "job.cancel",
            lambda: self.app.jobs.cancel_any(request.job_id, reason),
            lambda j: (j.id, f"cancelled job {j.id} ({reason})"),
        )
        return admin_pb2.CancelAnyJobResponse(job=self._job_pb(job, self._owners()))

    @streaming
    async def WatchEvents(
        self, request: admin_pb2.WatchEventsRequest, context: Ctx
    ) -> AsyncIterator[admin_pb2.WatchEventsResponse]:
        operator = admin_of(context, self.app.accounts)
        store, limit = self.app.store, min(request.limit or 50, 10_000)
        kinds = kinds_named(request.kind) if request.kind else None
        if request.kind and kinds is None:
            raise invalid(
                "BAD_EVENT_KIND",
                f"no event kind is {request.kind[:100]!r}; kinds: {kind_names()}",
            )
        # no event is numbered past a BIGINT: SQLite refused a larger number (INTERNAL)
        after = min(request.after_seq, MAX_BIGINT)
        if after:
            events = store.list_events(after, limit, job_id=request.job_id, kinds=kinds)
        else:
            events = store.list_events(limit=limit, newest=True, job_id=request.job_id, kinds=kinds)
        last = events[-1].seq if events else after
        for start in range(0, len(events), EVENTS_PAGE):
            page = events[start : start + EVENTS_PAGE]
            yield admin_pb2.WatchEventsResponse(events=[convert.event_to_pb(e) for e in page])
        if not request.follow:
            return
        if not events and not after:  # nothing yet: start from what comes next
            latest = store.list_events(limit=1, newest=True)
            last = latest[-1].seq if latest else 0
        woken = asyncio.Event()

        def wake(_: Event) -> None:
            woken.set()

        def read(operator: Account, last: int) -> tuple[Account, list[Event]]:
            operator = self.app.accounts.recheck(operator)
            return operator, store.list_events(
                last, EVENTS_PAGE, job_id=request.job_id, kinds=kinds
            )

        listeners = self.app.events.listeners
        listeners.append(wake)
        try:
            yield admin_pb2.WatchEventsResponse()  # the follow has begun: nothing missed after
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(woken.wait(), FOLLOW_POLL_SECONDS)
                woken.clear()
                # a key revoked or rotated, or the account disabled, ends the follow; read
                # in a group commit, so the loop never waits for one under way
                operator, new = await self.app.call(functools.partial(read, operator, last))
                if new:
                    last = new[-1].seq
                    yield admin_pb2.WatchEventsResponse(
                        events=[convert.event_to_pb(e) for e in new]
                    )
        finally:
            listeners.remove(wake)

    @unary
    async def CreateInvite(
        self, request: admin_pb2.CreateInviteRequest, context: Ctx
    ) -> admin_pb2.CreateInviteResponse:
        operator = admin_of(context, self.app.accounts)
        # not ToTimedelta(), which overflows past 999,999,999 days: the service says what is wrong
        expires_in = request.expires_in.seconds + request.expires_in.nanos / 1e9
        invite, code = await self._audited(
            operator,
            "invite.create",
            lambda: self.app.invites.create(request.uses, expires_in, request.credit, request.note),
            lambda made: (
                made[0].id,
                f"created invitation {made[0].id}: {made[0].uses} signup(s), "
                f"{made[0].credit} credit each",
            ),
        )
        return admin_pb2.CreateInviteResponse(
            invite=convert.invite_to_pb(invite),
            code=code,
            warning=self.app.identities.free_stake(invite.credit, invite.uses),
        )

    @unary
    async def ListInvites(
        self, request: admin_pb2.ListInvitesRequest, context: Ctx
    ) -> admin_pb2.ListInvitesResponse:
        admin_of(context, self.app.accounts)
        invites = self.app.invites.list()
        return admin_pb2.ListInvitesResponse(invites=[convert.invite_to_pb(i) for i in invites])

    @unary
    async def RevokeInvite(
        self, request: admin_pb2.RevokeInviteRequest, context: Ctx
    ) -> admin_pb2.RevokeInviteResponse:
        operator = admin_of(context, self.app.accounts)
        invite = await self._audited(
            operator,
            "invite.revoke",
            lambda: self.app.invites.revoke(request.id),
            lambda i: (i.id, f"revoked invitation {i.id}"),
        )
        return admin_pb2.RevokeInviteResponse(invite=convert.invite_to_pb(invite))
