"""AdminService: accounts, credit, nodes and the ledger, for admin accounts only."""

import uuid
from typing import Any

from grpc import aio

from sparegrid.coordinator.app import App
from sparegrid.coordinator.domain import Node, client_account, node_account
from sparegrid.coordinator.errors import CoordinatorError, ErrorKind, not_found
from sparegrid.coordinator.rpc import convert
from sparegrid.coordinator.rpc.auth import admin_of
from sparegrid.coordinator.rpc.errors import unary
from sparegrid.v1 import admin_pb2, admin_pb2_grpc

Ctx = aio.ServicerContext[Any, Any]


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    def __init__(self, app: App) -> None:
        self.app = app

    @unary
    async def CreateAccount(
        self, request: admin_pb2.CreateAccountRequest, context: Ctx
    ) -> admin_pb2.CreateAccountResponse:
        admin_of(context, self.app.accounts)
        account, key = self.app.accounts.create(
            request.name, request.initial_credit, request.is_admin
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
        admin_of(context, self.app.accounts)
        key = request.idempotency_key or uuid.uuid4().hex
        account = self.app.accounts.grant(request.name, request.amount, key, request.reason)
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
            state = admin_pb2.NODE_STATE_OFFLINE
        elif session.draining:
            state = admin_pb2.NODE_STATE_DRAINING
        else:
            state = admin_pb2.NODE_STATE_ONLINE
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
        admin_of(context, self.app.accounts)
        node = self._node(request.node_id)
        reason = request.reason[:500] or "banned by the operator"
        await self.app.call(lambda: self.app.reputations.ban(node.id, reason))
        return admin_pb2.BanNodeResponse(node=self._node_pb(node))

    @unary
    async def ReinstateNode(
        self, request: admin_pb2.ReinstateNodeRequest, context: Ctx
    ) -> admin_pb2.ReinstateNodeResponse:
        admin_of(context, self.app.accounts)
        node = self._node(request.node_id)
        reason = request.reason[:500] or "reinstated by the operator"
        await self.app.call(lambda: self.app.reputations.reinstate(node.id, reason))
        self.app.kick()
        return admin_pb2.ReinstateNodeResponse(node=self._node_pb(node))

    @unary
    async def ApproveNode(
        self, request: admin_pb2.ApproveNodeRequest, context: Ctx
    ) -> admin_pb2.ApproveNodeResponse:
        admin_of(context, self.app.accounts)
        node = self._node(request.node_id)
        reason = request.reason[:500] or "approved by the operator"
        try:
            await self.app.call(lambda: self.app.reputations.approve(node.id, reason))
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
            request.account, request.job_id, min(request.limit or 100, 10_000)
        )
        disputes = self.app.store.get_disputes(request.job_id) if request.job_id else []
        return admin_pb2.ListLedgerEntriesResponse(
            entries=[convert.entry_to_pb(e) for e in entries],
            disputes=[convert.dispute_to_pb(d) for d in disputes],
        )
