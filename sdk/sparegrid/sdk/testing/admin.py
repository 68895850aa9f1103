"""AdminService over the state of a FakeCoordinator."""

from collections.abc import AsyncIterator

import grpc

from sparegrid.sdk.testing._rpc import Abort, Context, abort, aborts
from sparegrid.sdk.testing.coordinator import FakeCoordinator, now
from sparegrid.v1 import admin_pb2, admin_pb2_grpc, common_pb2


class FakeAdminService(admin_pb2_grpc.AdminServiceServicer):
    def __init__(self, coordinator: FakeCoordinator) -> None:
        self.c = coordinator

    @aborts
    async def CreateAccount(
        self, request: admin_pb2.CreateAccountRequest, context: Context
    ) -> admin_pb2.CreateAccountResponse:
        self.c._caller(context, admin=True)
        if request.name in self.c.accounts:
            raise Abort(
                grpc.StatusCode.ALREADY_EXISTS,
                "ACCOUNT_EXISTS",
                f"account {request.name!r} exists already",
            )
        key = self.c.add_account(request.name, 0, request.is_admin)
        account = self.c.accounts[request.name]
        account.created_at.CopyFrom(now())
        if request.initial_credit:
            moves = (
                ("mint", -request.initial_credit, "initial"),
                (request.name, request.initial_credit, "initial"),
            )
            self.c._post(f"create-{request.name}", "", *moves)
        return admin_pb2.CreateAccountResponse(account=account, api_key=key)

    @aborts
    async def ListAccounts(
        self, request: admin_pb2.ListAccountsRequest, context: Context
    ) -> admin_pb2.ListAccountsResponse:
        self.c._caller(context, admin=True)
        return admin_pb2.ListAccountsResponse(accounts=list(self.c.accounts.values()))

    @aborts
    async def GrantCredit(
        self, request: admin_pb2.GrantCreditRequest, context: Context
    ) -> admin_pb2.GrantCreditResponse:
        self.c._caller(context, admin=True)
        if request.name not in self.c.accounts:
            raise Abort(
                grpc.StatusCode.NOT_FOUND, "ACCOUNT_NOT_FOUND", f"no account {request.name!r}"
            )
        if request.idempotency_key not in self.c.grants:
            self.c.grants.add(request.idempotency_key)
            moves = (
                ("mint", -request.amount, request.reason),
                (request.name, request.amount, request.reason),
            )
            self.c._post(f"grant-{request.idempotency_key}", "", *moves)
        return admin_pb2.GrantCreditResponse(account=self.c.accounts[request.name])

    @aborts
    async def ListNodes(
        self, request: admin_pb2.ListNodesRequest, context: Context
    ) -> admin_pb2.ListNodesResponse:
        self.c._caller(context, admin=True)
        signer = self.c.signer
        done = sum(1 for e in self.c.ledger if e.account == signer.node_id)
        node = admin_pb2.Node(
            node_id=signer.node_id,
            name="fake-node",
            state=admin_pb2.NODE_STATE_ONLINE,
            devices=[common_pb2.Device(index=0, kind=common_pb2.DEVICE_KIND_CPU, name="cpu")],
            tasks_succeeded=done,
            credit=done,
            last_seen=now(),
        )
        return admin_pb2.ListNodesResponse(nodes=[node])

    @aborts
    async def CheckLedger(
        self, request: admin_pb2.CheckLedgerRequest, context: Context
    ) -> admin_pb2.CheckLedgerResponse:
        self.c._caller(context, admin=True)
        ledger = self.c.ledger
        total = sum(e.amount for e in ledger)
        transactions = {e.transaction_id for e in ledger}
        problems = [f"entries sum to {total}, not 0"] if total else []
        return admin_pb2.CheckLedgerResponse(
            balanced=not problems,
            problems=problems,
            transactions=len(transactions),
            entries=len(ledger),
            total=total,
        )

    @aborts
    async def ListLedgerEntries(
        self, request: admin_pb2.ListLedgerEntriesRequest, context: Context
    ) -> admin_pb2.ListLedgerEntriesResponse:
        self.c._caller(context, admin=True)
        entries = [
            e
            for e in self.c.ledger
            if request.account in ("", e.account) and request.job_id in ("", e.job_id)
        ]
        return admin_pb2.ListLedgerEntriesResponse(entries=entries[: request.limit or 100])

    @aborts
    async def BanNode(
        self, request: admin_pb2.BanNodeRequest, context: Context
    ) -> admin_pb2.BanNodeResponse:
        self.c._caller(context, admin=True)
        raise Abort(grpc.StatusCode.NOT_FOUND, "NODE_NOT_FOUND", "the fake bans no nodes")

    @aborts
    async def ReinstateNode(
        self, request: admin_pb2.ReinstateNodeRequest, context: Context
    ) -> admin_pb2.ReinstateNodeResponse:
        self.c._caller(context, admin=True)
        raise Abort(grpc.StatusCode.NOT_FOUND, "NODE_NOT_FOUND", "the fake bans no nodes")

    @aborts
    async def ApproveNode(
        self, request: admin_pb2.ApproveNodeRequest, context: Context
    ) -> admin_pb2.ApproveNodeResponse:
        self.c._caller(context, admin=True)
        raise Abort(grpc.StatusCode.NOT_FOUND, "NODE_NOT_FOUND", "the fake has no nodes")

    # Operator controls and invitations are tested against the real coordinator
    # (tests/coordinator); the fake says so instead of pretending.
    async def _real_only(self, request: object, context: Context) -> None:
        await context.abort(
            grpc.StatusCode.UNIMPLEMENTED, "the fake coordinator has no operator controls"
        )

    SetAccountDisabled = RotateKey = RevokeKey = DebitCredit = _real_only  # type: ignore[assignment]
    ListAllJobs = CancelAnyJob = _real_only  # type: ignore[assignment]
    CreateInvite = ListInvites = RevokeInvite = _real_only  # type: ignore[assignment]

    async def WatchEvents(
        self, request: admin_pb2.WatchEventsRequest, context: Context
    ) -> AsyncIterator[admin_pb2.WatchEventsResponse]:
        try:
            self.c._caller(context, admin=True)
            raise Abort(grpc.StatusCode.UNIMPLEMENTED, "NO_EVENTS", "the fake records no events")
        except Abort as err:
            await abort(context, err)
        yield admin_pb2.WatchEventsResponse()  # never reached: makes this a generator
