"""WorkerService.Session: one stream per worker; work goes down, results come up."""

import asyncio
import contextlib
import functools
import logging
import os
import secrets
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

from google.protobuf.duration_pb2 import Duration
from grpc import aio
from packaging.version import InvalidVersion, Version

from sparegrid.coordinator.app import App
from sparegrid.coordinator.domain import Attempt, Node, Task, node_account, printable
from sparegrid.coordinator.errors import CoordinatorError, ErrorKind, invalid
from sparegrid.coordinator.rpc import convert
from sparegrid.coordinator.rpc.auth import peer_address
from sparegrid.coordinator.rpc.errors import streaming
from sparegrid.coordinator.services.identity import is_anonymous
from sparegrid.coordinator.services.results import Failure, Verdict
from sparegrid.coordinator.settings import Settings
from sparegrid.v1 import common_pb2, worker_pb2, worker_pb2_grpc
from sparegrid.wire import REGISTER_TAG, BadSignature, node_id_for, verify

log = logging.getLogger("sparegrid.coordinator.worker")

Ctx = aio.ServicerContext[Any, Any]
Msg = worker_pb2.CoordinatorMessage
MAX_DEVICES = 64
MAX_DEVICE_INDEX = 1024
MAX_BATCH = 10_000
# A worker sends its Hello on connecting and its ChallengeResponse on the Challenge: a
# stream that sends neither this long ends (else each costs the coordinator ~30 kB for ever)
HANDSHAKE_SECONDS = 10.0
# heartbeats in one heartbeat interval that end a session: a worker sends one, a flood
# costs the event loop a message each
HEARTBEAT_FLOOD = 20
# how long a worker refused for its address's sessions is asked to wait: one of the others
# must end first
SESSIONS_RETRY_SECONDS = 30.0
REFUSAL_READ_SECONDS = 1.0  # how long a refused session's Hello is waited for
_CLOSE = object()


class QueueSink:
    """Messages for one worker: buffered, then queued on its stream after each commit.
    A sink holding messages puts itself in `unflushed`: a commit flushes only those."""

    def __init__(
        self,
        unflushed: set[Any] | None = None,
        keeps_logs: Callable[[str], bool] = lambda job_id: False,
    ) -> None:
        self.queue: asyncio.Queue[Msg | object] = asyncio.Queue()
        self._held: list[Msg | object] = []
        self._unflushed = unflushed if unflushed is not None else set()
        self._keeps_logs = keeps_logs  # by job id: does the job keep successful tasks' logs

    def assign(self, items: list[tuple[Attempt, Task, str]]) -> None:
        assignments = [
            worker_pb2.Assignment(
                attempt_id=attempt.id,
                task_id=task.id,
                job_id=task.job_id,
                kind=kind,
                params=attempt.params or task.params,  # a spot check runs a crop
                inputs=[
                    common_pb2.InputRef(name=r.name, digest=r.digest, size=r.size)
                    for r in task.inputs
                ],
                device_index=attempt.device_index,
                deadline=convert.timestamp(attempt.deadline),
                keep_logs=self._keeps_logs(task.job_id),
            )
            for attempt, task, kind in items
        ]
        self._held.append(Msg(assign=worker_pb2.Assign(assignments=assignments)))
        self._unflushed.add(self)

    def cancel(self, attempt_ids: list[str], reason: str) -> None:
        self._held.append(Msg(cancel=worker_pb2.Cancel(attempt_ids=attempt_ids, reason=reason)))
        self._unflushed.add(self)

    def credited(self, total: int) -> None:
        self._held.append(Msg(credited=worker_pb2.Credited(total=total)))
        self._unflushed.add(self)

    def flush(self) -> None:
        for message in self._held:
            self.queue.put_nowait(message)
        self._held.clear()

    def discard(self) -> None:
        self._held.clear()

    def close(self) -> None:
        """Ends the session now; the worker reconnects."""
        self.queue.put_nowait(_CLOSE)


def _reply(sink: QueueSink, future: "asyncio.Future[Msg | None]") -> None:
    if future.cancelled():  # the coordinator is stopping
        return
    error = future.exception()
    if error is not None:
        sink.queue.put_nowait(error)
    elif (message := future.result()) is not None:
        sink.queue.put_nowait(message)


def _seconds(value: float) -> Duration:
    d = Duration()
    d.FromNanoseconds(int(value * 1e9))
    return d


def _unauthenticated(message: str) -> CoordinatorError:
    return CoordinatorError(ErrorKind.UNAUTHENTICATED, "BAD_REGISTRATION", message)


async def _handshake(
    incoming: AsyncIterator[worker_pb2.WorkerMessage], what: str
) -> worker_pb2.WorkerMessage | None:
    """The next message of a session's handshake, within HANDSHAKE_SECONDS."""
    try:
        async with asyncio.timeout(HANDSHAKE_SECONDS):
            return await anext(incoming, None)
    except TimeoutError:
        raise CoordinatorError(
            ErrorKind.UNAVAILABLE,
            "HANDSHAKE_TIMEOUT",
            f"no {what} within {HANDSHAKE_SECONDS:g} s (a worker sends it at once); connect again",
        ) from None


class Heartbeats:
    """Which of a session's heartbeats renew its leases (a group commit each): one within
    a quarter interval of the last renewal does not (nor, where the lease is barely longer
    than the interval, within half the margin), so a flood costs no commits; and past
    HEARTBEAT_FLOOD in one interval the session ends."""

    def __init__(self, settings: Settings) -> None:
        self.interval = settings.heartbeat_seconds
        margin = settings.lease_seconds - settings.heartbeat_seconds
        self.least = self.interval / 4 if margin <= 0 else min(self.interval / 4, margin / 2)
        self._renewed = float("-inf")
        self._window = float("-inf")
        self._count = 0
        self.flooding = False

    def renews(self, now: float) -> bool:
        if now - self._window >= self.interval:
            self._window, self._count = now, 0
        self._count += 1
        self.flooding = self._count > HEARTBEAT_FLOOD
        if now - self._renewed < self.least:
            return False
        self._renewed = now
        return True

    def flood_error(self) -> CoordinatorError:
        return CoordinatorError(
            ErrorKind.EXHAUSTED,
            "TOO_MANY_HEARTBEATS",
            f"over {HEARTBEAT_FLOOD} heartbeats in {self.interval:g} s; a worker sends one "
            "per interval (Welcome.heartbeat_interval)",
        )


def _sends_key(context: Ctx) -> bool:
    """Whether the worker sent an owner account's API key (checked later, once admitted)."""
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            return scheme.lower() == "bearer" and bool(token.strip())
    return False


def _node_from_hello(hello: worker_pb2.Hello, now: float) -> Node:
    try:
        node_id = node_id_for(hello.public_key)
    except BadSignature as exc:
        raise invalid("BAD_HELLO", str(exc)) from None
    if not 1 <= len(hello.devices) <= MAX_DEVICES:
        raise invalid("BAD_HELLO", f"a worker offers 1 to {MAX_DEVICES} devices")
    devices = [convert.device_from_pb(d) for d in hello.devices]
    if len({d.index for d in devices}) != len(devices):
        raise invalid("BAD_HELLO", "device indices must be unique")
    if any(d.index >= MAX_DEVICE_INDEX for d in devices):  # an attempt stores it (int4)
        raise invalid("BAD_HELLO", f"device indices are 0 to {MAX_DEVICE_INDEX - 1}")
    return Node(
        id=node_id,
        public_key=hello.public_key,
        name=printable(hello.node_name[:100]),  # shown in operators' terminals (admin nodes)
        devices=devices,
        software={
            printable(k[:64]): printable(v[:64]) for k, v in list(hello.software.items())[:64]
        },
        executors={
            printable(e.name[:64]): printable(e.version[:64]) for e in hello.executors[:256]
        },
        first_seen=now,
        last_seen=now,
    )


def check_worker_version(version: str, settings: Settings) -> None:
    """Refuses a worker older than `--min-worker-version`, saying what to do."""
    minimum = settings.min_worker_version
    if not minimum:
        return
    try:
        too_old = Version(version) < Version(minimum)
    except InvalidVersion:
        too_old = True
    if too_old:
        raise CoordinatorError(
            ErrorKind.PRECONDITION,
            "WORKER_TOO_OLD",
            f"this coordinator needs sparegrid {minimum} or newer on workers; this worker "
            f"runs {version or 'an unknown version'}: upgrade it (pip install -U sparegrid)",
        )


def _ack(batch_id: int, verdicts: list[Verdict]) -> Msg:
    return Msg(
        result_ack=worker_pb2.ResultAck(
            batch_id=batch_id,
            verdicts=[
                worker_pb2.AttemptVerdict(
                    attempt_id=v.attempt_id,
                    accepted=v.accepted,
                    code=v.code,
                    message=v.message,
                    credit=v.credit,
                )
                for v in verdicts
            ],
        )
    )


class WorkerServicer(worker_pb2_grpc.WorkerServiceServicer):
    def __init__(self, app: App) -> None:
        self.app = app

    @streaming
    async def Session(
        self, request_iterator: AsyncIterator[worker_pb2.WorkerMessage], context: Ctx
    ) -> AsyncIterator[Msg]:
        """A session sent without an owner account's key counts against its caller's
        address from its start to its end, handshake included: a node key costs nothing,
        so one address could otherwise hold sessions without end (about 50 kB each, and
        a node row each)."""
        address = peer_address(context.peer() or "")
        anonymous = not _sends_key(context)
        if anonymous and not self.app.admission.open_session(address):
            # its Hello is read first, if it comes at once (a refusal while the worker
            # writes reaches it as INTERNAL), but no longer: this stream is not counted
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(REFUSAL_READ_SECONDS):
                    await anext(aiter(request_iterator), None)
            limit = self.app.admission.config.anonymous_sessions
            raise CoordinatorError(
                ErrorKind.EXHAUSTED,
                "TOO_MANY_SESSIONS",
                f"{address} holds {limit} worker sessions without an owner account's key "
                "already, the most one address may; start workers with an owner account's "
                "key (SPAREGRID_OWNER_KEY), whose sessions are not counted, or ask the "
                "operator to raise --anonymous-sessions-per-address",
                retry_after=SESSIONS_RETRY_SECONDS,
            )
        session = self._session(request_iterator, context)
        try:
            async for message in session:
                yield message
        finally:
            try:
                await session.aclose()
            finally:
                if anonymous:
                    self.app.admission.close_session(address)

    async def _session(
        self, request_iterator: AsyncIterator[worker_pb2.WorkerMessage], context: Ctx
    ) -> AsyncGenerator[Msg, None]:
        app = self.app
        incoming = aiter(request_iterator)
        first = await _handshake(incoming, "Hello")
        if first is None or not first.HasField("hello"):
            raise invalid("BAD_HELLO", "a worker session starts with Hello")
        # what Hello's own fields refuse is refused first: garbage takes no turn
        check_worker_version(first.hello.software.get("sparegrid", ""), app.settings)
        node = _node_from_hello(first.hello, app.clock.now())
        # admitted at a bounded rate, before any costly step (the owner's key, the
        # signature); Hello is read first so the worker hears the refusal while reading
        # (a refusal while it writes reaches it as INTERNAL, not UNAVAILABLE)
        address = peer_address(context.peer() or "")
        admitted, wait = app.admission.admit(address)
        if not admitted:
            raise CoordinatorError(
                ErrorKind.UNAVAILABLE,
                "REGISTRATION_BUSY",
                f"the coordinator is busy admitting registrations "
                f"({app.settings.admission.rate:g} a second); retry in {wait:.1f} s",
                retry_after=wait,
            )
        if wait:  # its turn in the line held here comes soon: cheaper than a refusal
            await app.clock.sleep(wait)
            node.first_seen = node.last_seen = app.clock.now()
        node.owner = self._owner(context, node.id)
        app.identities.admit(node)
        session_id, nonce = uuid.uuid4().hex, os.urandom(32)
        yield Msg(challenge=worker_pb2.Challenge(nonce=nonce, session_id=session_id))
        answer = await _handshake(incoming, "ChallengeResponse")
        if answer is None or not answer.HasField("challenge_response"):
            raise _unauthenticated("expected ChallengeResponse after Challenge")
        try:
            signed = nonce + session_id.encode()
            verify(node.public_key, REGISTER_TAG, signed, answer.challenge_response.signature)
        except BadSignature as exc:
            raise _unauthenticated(f"challenge signature does not verify: {exc}") from None
        sink = QueueSink(app.unflushed, self._keeps_logs)
        running = list(first.hello.running_attempts)
        budget = first.hello.max_attempt_seconds

        def attach() -> tuple[list[str], list[str], int]:
            known = app.store.get_node(node.id)
            if known is None and is_anonymous(node.owner):
                self._count_new_node(address)  # before its row is written
            app.identities.keep_owner(node, known)  # once it proved its key
            app.store.upsert_node(node)
            if app.identities.needs_approval:
                app.reputations.hold_for_approval(node.id)
            resumed, cancelled = app.scheduler.connect(node, sink, running, budget)
            return resumed, cancelled, app.store.balance(node_account(node.id))

        app.sinks.add(sink)
        token = secrets.token_urlsafe(32)
        reader: asyncio.Task[None] | None = None
        try:
            resumed, cancelled, credited = await app.call(attach)
            app.session_tokens[token] = node.id
            log.info("node %s (%s) connected, %d device(s)", node.id, node.name, len(node.devices))
            reader = asyncio.create_task(self._read(node, incoming, sink))
            standing = app.reputations.get(node.id)
            yield Msg(
                welcome=worker_pb2.Welcome(
                    node_id=node.id,
                    session_token=token,
                    heartbeat_interval=_seconds(app.settings.heartbeat_seconds),
                    idle_heartbeat_interval=_seconds(app.settings.idle_heartbeat_seconds),
                    lease_duration=_seconds(app.settings.lease_seconds),
                    resumed_attempts=resumed,
                    cancelled_attempts=cancelled,
                    standing=standing.standing.value,
                    standing_reason=standing.reason,
                    credited=credited,
                )
            )
            while (message := await sink.queue.get()) is not _CLOSE:
                if isinstance(message, BaseException):
                    raise message
                assert isinstance(message, Msg)
                yield message
        finally:
            if reader is not None:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await reader
            app.session_tokens.pop(token, None)
            app.sinks.discard(sink)
            detach = app.call(lambda: app.scheduler.disconnect(node.id, sink))
            with contextlib.suppress(Exception):
                await asyncio.shield(detach)
            log.info("node %s disconnected", node.id)

    def _count_new_node(self, address: str) -> None:
        """Counts a node key never seen before, of a node without an owner account's key,
        against its caller's address; past the address's bound, refused before any row is
        written: one address opening sessions under fresh keys one after another would
        otherwise add a node row each time, millions a day."""
        wait = self.app.admission.new_nodes.take(address)
        if not wait:
            return
        limit = self.app.admission.config.new_anonymous_nodes
        raise CoordinatorError(
            ErrorKind.EXHAUSTED,
            "TOO_MANY_NEW_NODES",
            f"{address} brings node keys never seen before, without an owner account's "
            f"key, faster than one address may ({limit} at once, then {limit} an hour); "
            f"retry in {wait:.0f} s, start workers with an owner account's key "
            "(SPAREGRID_OWNER_KEY), whose nodes are not counted, or ask the operator to "
            "raise --new-anonymous-nodes-per-address. A worker that keeps its key (its "
            "--data-dir) is never counted again",
            retry_after=wait,
        )

    async def _read(
        self, node: Node, incoming: AsyncIterator[worker_pb2.WorkerMessage], sink: QueueSink
    ) -> None:
        """Hands each message to the next group commit; replies follow in order."""
        beats = Heartbeats(self.app.settings)
        try:
            async for message in incoming:
                body = message.WhichOneof("body")
                if body == "heartbeat":
                    renew = beats.renews(asyncio.get_running_loop().time())
                    if beats.flooding:
                        sink.queue.put_nowait(beats.flood_error())
                        return
                    if not renew or not self.app.scheduler.holds_leases(node.id):
                        self.app.saw(node.id)  # nothing to renew: no commit, no dispatch
                        continue
                if body == "results":
                    await self._compare_ahead(node, message.results)
                future = self.app.call(functools.partial(self._handle, node, message))
                future.add_done_callback(functools.partial(_reply, sink))
                if body != "heartbeat":  # a renewal frees no credit and queues nothing
                    self.app.kick()
        finally:
            self.app.call(lambda: None).add_done_callback(lambda _: sink.queue.put_nowait(_CLOSE))

    async def _compare_ahead(self, node: Node, results: worker_pb2.Results) -> None:
        """Compares the batch's results with those their tasks hold in a worker thread,
        before the batch is settled on the event loop: decoding a 4K frame takes seconds."""
        try:
            work = self.app.intake.comparisons(
                node.id, list(results.statements), dict(results.inline_outputs)
            )
            if work is not None:
                await asyncio.to_thread(work)
        except Exception:  # settlement compares for itself
            log.exception("comparing node %s's results ahead failed", node.id)

    def _keeps_logs(self, job_id: str) -> bool:
        active = self.app.scheduler.jobs.get(job_id)
        return active is not None and active.job.keep_logs

    def _owner(self, context: Ctx, node_id: str) -> str:
        """The account whose API key the worker sent (`authorization: Bearer`), proving who
        owns it; a node without one is its own owner, "node:<id>"."""
        for key, value in context.invocation_metadata() or ():
            if key == "authorization" and isinstance(value, str):
                scheme, _, token = value.partition(" ")
                if scheme.lower() == "bearer" and token.strip():
                    return self.app.accounts.authenticate(token.strip()).name
        return f"node:{node_id}"

    def _handle(self, node: Node, message: worker_pb2.WorkerMessage) -> Msg | None:
        app, body = self.app, message.WhichOneof("body")
        if body == "credit":
            try:
                credit = message.credit
                app.scheduler.grant(node.id, credit.device_index, credit.count, credit.reset)
            except (ValueError, KeyError) as exc:
                raise invalid("BAD_CREDIT", str(exc)) from None
        elif body == "heartbeat":
            app.scheduler.heartbeat(node.id)
            app.saw(node.id)
        elif body == "results":
            results = message.results
            if len(results.statements) > MAX_BATCH:
                raise invalid("BATCH_TOO_LARGE", f"at most {MAX_BATCH} results per batch")
            verdicts = app.intake.results(
                node.id,
                list(results.statements),
                results.signature,
                dict(results.inline_outputs),
                list(results.logs),
            )
            return _ack(results.batch_id, verdicts)
        elif body == "failures":
            failures = [
                Failure(
                    f.attempt_id,
                    f.code,
                    f.message,
                    f.retryable,
                    f.log if f.HasField("log") else None,
                )
                for f in message.failures.failures[:MAX_BATCH]
            ]
            return _ack(message.failures.batch_id, app.intake.failures(node.id, failures))
        elif body == "drain":
            app.scheduler.drain(node.id)
        else:
            raise invalid("BAD_MESSAGE", f"unexpected {body or 'empty'} message in a session")
        return None
