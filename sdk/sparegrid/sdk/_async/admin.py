"""`AsyncAdminClient` for operators, and `signup` with an invitation code."""

import functools
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import replace
from datetime import timedelta
from typing import TYPE_CHECKING, TypeVar

import grpc

from sparegrid.sdk import convert
from sparegrid.sdk.backend import AsyncChannelRef, asleep
from sparegrid.sdk.config import (
    Connection,
    PathLike,
    resolve_address,
    resolve_admin_key,
    resolve_tls,
    resolve_tls_ca,
)
from sparegrid.sdk.errors import UnavailableError, from_rpc_error
from sparegrid.sdk.models import (
    Account,
    Dispute,
    Event,
    Invite,
    JobSnapshot,
    JobState,
    LedgerCheck,
    LedgerEntry,
    Node,
)
from sparegrid.sdk.retry import RetryPolicy, acall
from sparegrid.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    client_pb2,
    client_pb2_grpc,
)

if TYPE_CHECKING:
    pass

from sparegrid.sdk._async.client import DEFAULT_TIMEOUT, _AsyncBase

Req = TypeVar("Req")
Resp = TypeVar("Resp")


async def signup(
    address: str | None,
    code: str,
    name: str = "",
    *,
    tls_ca: PathLike | None = None,
    tls: bool | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> tuple[Account, str]:
    """Creates an account with an invitation code the coordinator's operator issued; returns
    it and its API key (shown this once). Needs no API key. An empty `name`: the
    coordinator picks one. Each refusal (INVITE_UNKNOWN, INVITE_EXPIRED, INVITE_REVOKED,
    INVITE_USED_UP, BAD_NAME, ACCOUNT_EXISTS, TOO_MANY_SIGNUPS) creates nothing."""
    connection = Connection(resolve_address(address), "", resolve_tls_ca(tls_ca), resolve_tls(tls))
    channel = AsyncChannelRef(connection)
    stub: client_pb2_grpc.ClientServiceAsyncStub = client_pb2_grpc.ClientServiceStub(
        channel.channel
    )
    request = client_pb2.SignupRequest(code=code, name=name)

    async def once() -> client_pb2.SignupResponse:
        return await stub.Signup(request, timeout=timeout)

    try:
        response = await acall(once, RetryPolicy(), idempotent=False)
    finally:
        await channel.close()
    account = Account(name=response.name, balance=response.balance, is_admin=False)
    return account, response.api_key


class AsyncAdminClient(_AsyncBase):
    """Operator calls. The key: `api_key`, `key_file`, SPAREGRID_ADMIN_KEY, or the file
    `coordinator serve` recorded under $XDG_CONFIG_HOME/sparegrid/admin/."""

    def __init__(
        self,
        address: str | None = None,
        api_key: str | None = None,
        *,
        key_file: PathLike | None = None,
        tls_ca: PathLike | None = None,
        tls: bool | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        connection: Connection | None = None,
    ) -> None:
        if connection is None:
            target = resolve_address(address)
            key = resolve_admin_key(target, api_key, key_file)
            connection = Connection(target, key, resolve_tls_ca(tls_ca), resolve_tls(tls))
        super().__init__(connection, timeout, retry)

    @functools.cached_property
    def _admin(self) -> "admin_pb2_grpc.AdminServiceAsyncStub":
        return admin_pb2_grpc.AdminServiceStub(self._channel_ref.channel)

    async def create_account(
        self, name: str, credit: int = 0, admin: bool = False
    ) -> tuple[Account, str]:
        """Creates an account; returns it and its API key (shown this once)."""
        request = admin_pb2.CreateAccountRequest(name=name, initial_credit=credit, is_admin=admin)
        response = await self._unary(self._admin.CreateAccount, request, idempotent=False)
        return convert.account(response.account), response.api_key

    async def create_invite(
        self,
        uses: int = 1,
        expires_in: float | timedelta = 0,
        credit: int = 0,
        note: str = "",
    ) -> tuple[Invite, str]:
        """Issues an invitation code for `uses` signups (`signup`), each granted `credit`,
        expiring `expires_in` (seconds, or a timedelta) from now, or never (0); returns its
        record and the code (shown this once)."""
        seconds = expires_in.total_seconds() if isinstance(expires_in, timedelta) else expires_in
        request = convert.invite_request(uses, seconds, credit, note)
        response = await self._unary(self._admin.CreateInvite, request, idempotent=False)
        made = replace(convert.invite(response.invite), warning=response.warning)
        return made, response.code

    async def invites(self) -> list[Invite]:
        """Every invitation issued, newest first."""
        response = await self._unary(self._admin.ListInvites, admin_pb2.ListInvitesRequest())
        return [convert.invite(i) for i in response.invites]

    async def revoke_invite(self, invite_id: str) -> Invite:
        """No one signs up with the invitation's code from now on."""
        request = admin_pb2.RevokeInviteRequest(id=invite_id)
        response = await self._unary(self._admin.RevokeInvite, request)
        return convert.invite(response.invite)

    async def list_accounts(self) -> list[Account]:
        response = await self._unary(self._admin.ListAccounts, admin_pb2.ListAccountsRequest())
        return [convert.account(a) for a in response.accounts]

    async def grant(
        self, name: str, amount: int, reason: str = "", idempotency_key: str | None = None
    ) -> Account:
        request = convert.grant_request(name, amount, reason, idempotency_key)
        response = await self._unary(self._admin.GrantCredit, request)
        return convert.account(response.account)

    async def debit(
        self, name: str, amount: int, reason: str = "", idempotency_key: str | None = None
    ) -> Account:
        """Takes `amount` credit from the account back to the mint; refused (nothing
        taken) beyond its balance."""
        request = admin_pb2.DebitCreditRequest(
            name=name,
            amount=amount,
            reason=reason,
            idempotency_key=idempotency_key or convert.new_idempotency_key(),
        )
        response = await self._unary(self._admin.DebitCredit, request)
        return convert.account(response.account)

    async def set_account_disabled(self, name: str, disabled: bool = True) -> Account:
        """A disabled account's key is refused and its nodes cannot connect."""
        request = admin_pb2.SetAccountDisabledRequest(name=name, disabled=disabled)
        response = await self._unary(self._admin.SetAccountDisabled, request)
        return convert.account(response.account)

    async def rotate_key(self, name: str) -> tuple[Account, str]:
        """A new key for the account (shown this once); the old one stops working."""
        request = admin_pb2.RotateKeyRequest(name=name)
        response = await self._unary(self._admin.RotateKey, request, idempotent=False)
        return convert.account(response.account), response.api_key

    async def revoke_key(self, name: str) -> Account:
        request = admin_pb2.RevokeKeyRequest(name=name)
        response = await self._unary(self._admin.RevokeKey, request)
        return convert.account(response.account)

    async def all_jobs(
        self, account: str = "", states: Sequence[JobState | str] = (), limit: int = 100
    ) -> list[JobSnapshot]:
        """Jobs of every account (or of one), newest first."""
        request = admin_pb2.ListAllJobsRequest(
            account=account, states=convert.job_states_to_pb(states), limit=limit
        )
        response = await self._unary(self._admin.ListAllJobs, request)
        return [convert.job_snapshot(j) for j in response.jobs]

    async def cancel_job(self, job_id: str, reason: str = "") -> JobSnapshot:
        """Cancels any account's job."""
        request = admin_pb2.CancelAnyJobRequest(job_id=job_id, reason=reason)
        response = await self._unary(self._admin.CancelAnyJob, request)
        return convert.job_snapshot(response.job)

    async def ban_node(self, node_id: str, reason: str = "") -> Node:
        """No more work for the node until `reinstate_node`."""
        request = admin_pb2.BanNodeRequest(node_id=node_id, reason=reason)
        response = await self._unary(self._admin.BanNode, request)
        return convert.node(response.node)

    async def approve_node(self, node_id: str, reason: str = "") -> Node:
        """Lets a node that waits for approval (`--enrollment approve`) take work."""
        request = admin_pb2.ApproveNodeRequest(node_id=node_id, reason=reason)
        response = await self._unary(self._admin.ApproveNode, request)
        return convert.node(response.node)

    async def reinstate_node(self, node_id: str, reason: str = "") -> Node:
        """Lifts a ban or a quarantine; the node's strikes and streak start from zero."""
        request = admin_pb2.ReinstateNodeRequest(node_id=node_id, reason=reason)
        response = await self._unary(self._admin.ReinstateNode, request)
        return convert.node(response.node)

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

    async def events(self, limit: int = 50, job_id: str = "", kind: str = "") -> list[Event]:
        """The latest recorded events, oldest first: of one job with `job_id`, of one kind
        or family with `kind` ("admin": what admins changed; "node": node.banned, ...)."""
        request = admin_pb2.WatchEventsRequest(limit=limit, job_id=job_id, kind=kind)
        stream = self._admin.WatchEvents(
            request, metadata=self.connection.metadata, timeout=self.timeout
        )
        try:
            return [convert.event(e) async for response in stream for e in response.events]
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

    async def follow_events(
        self,
        limit: int = 50,
        job_id: str = "",
        on_following: Callable[[], None] | None = None,
        kind: str = "",
    ) -> AsyncIterator[Event]:
        """The latest `limit` events, then each new one as it is recorded, for ever;
        reconnects (resuming after the last one seen) when the coordinator goes away.
        `on_following` is called each time the stream is open and following; `job_id`
        and `kind` filter as in `events`."""
        request = admin_pb2.WatchEventsRequest(limit=limit, follow=True, job_id=job_id, kind=kind)
        while True:
            stream = self._admin.WatchEvents(request, metadata=self.connection.metadata)
            try:
                async for response in stream:
                    if not response.events and on_following is not None:
                        on_following()
                    for msg in response.events:
                        request.after_seq = msg.seq
                        yield convert.event(msg)
            except grpc.RpcError as exc:
                err = from_rpc_error(exc)
                if not isinstance(err, UnavailableError):
                    raise err from None
            finally:
                stream.cancel()
            await asleep(1.0)
