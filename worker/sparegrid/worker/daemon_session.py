"""The worker daemon's session with the coordinator: connecting (with jittered backoff),
the Hello and Welcome, the coordinator's messages, heartbeats. See docs/protocol.md."""

import asyncio
import dataclasses
import logging
import random

import grpc
import grpc.aio

from sparegrid.v1 import worker_pb2
from sparegrid.wire.codes import CODE_METADATA_KEY, ErrorCode, VerdictCode
from sparegrid.wire.tls import hint as tls_hint
from sparegrid.worker.daemon_results import WorkerResults
from sparegrid.worker.errors import BlobUnavailable, SessionError
from sparegrid.worker.node.devices import DeviceInfo
from sparegrid.worker.node.earnings import Earnings
from sparegrid.worker.policy.disk import DiskGuard
from sparegrid.worker.upstream.backoff import Backoff
from sparegrid.worker.upstream.heartbeat import Cadence
from sparegrid.worker.upstream.messages import hello
from sparegrid.worker.upstream.ratelimit import RateLimiter
from sparegrid.worker.upstream.session import Session, connect, open_channel, reconnect_delay

_log = logging.getLogger("sparegrid.worker")


class WorkerSession(WorkerResults):
    """The Worker's session loop; the Worker holds the state named here."""

    earnings: Earnings
    disk: DiskGuard
    standing: tuple[str, str]
    _rng: random.Random
    _upload_limit: RateLimiter | None
    _stopped: asyncio.Event
    _hint: str
    _welcomed: bool  # this attempt got as far as the coordinator's welcome
    _reached: bool  # some attempt of this run did
    _refusal: str  # why the coordinator refused the last attempt (a code it answered with)

    async def _connect_loop(self) -> None:
        backoff = Backoff(self.config.reconnect_initial, self.config.reconnect_max, self._rng)
        uses_tls = self.config.tls or self.config.tls_ca is not None
        while True:
            error: BaseException | None = None
            self._welcomed = False
            try:
                await self._run_session(backoff)
                reason = "the coordinator ended the session"
            except grpc.aio.AioRpcError as exc:
                reason, error = f"{exc.code().name}: {exc.details()}", exc
                if _refused(exc):  # too old: say so loudly, with what to do
                    _log.error("the coordinator refuses this worker: %s", exc.details())
                elif _code(exc) == ErrorCode.BAD_API_KEY and self.config.owner_key:
                    reason = (
                        "the owner key this worker was given (--owner-key-file or "
                        "SPAREGRID_OWNER_KEY) is not known to this coordinator: check that it "
                        "is your account's key on this coordinator"
                    )
            except (SessionError, BlobUnavailable, TimeoutError, OSError) as exc:
                reason = str(exc) or type(exc).__name__
            except Exception as exc:  # a bug must not end the worker: log it and reconnect
                _log.exception("session failed unexpectedly")
                reason = repr(exc)
            # it answered, refusing (an owner key it does not know): the stop line says so
            coded = isinstance(error, grpc.aio.AioRpcError) and _code(error)
            self._refusal = reason if coded and not self._welcomed else ""
            if self._stopped.is_set():
                return
            delay = reconnect_delay(error, backoff.next_delay(), self._rng)
            if self._welcomed:
                _log.warning("session lost (%s); reconnecting in %.1fs", reason, delay)
            else:
                _log.warning(
                    "cannot connect to the coordinator at %s (%s); trying again in %.1fs",
                    self.config.coordinator,
                    reason,
                    delay,
                )
            if "UNAVAILABLE" in reason:  # each new likely cause, once until it connects
                cause = await asyncio.to_thread(tls_hint, self.config.coordinator, uses_tls)
                if cause and cause != self._hint:
                    self._hint = cause
                    _log.warning("hint: %s", cause)
            await self._clock.sleep(delay)

    async def _run_session(self, backoff: Backoff) -> None:
        channel = open_channel(self.config)
        try:
            # finished attempts waiting to be acknowledged are still ours: report them too,
            # or a restarted coordinator would take their leases back and re-run them
            await self._batcher.flush()
            running = self._held()
            message = hello(
                self.signer.public_key,
                self.config.name,
                self.lent_devices(),
                self.executors.specs(),
                running,
                self.config.max_attempt_seconds,
            )
            session = await connect(channel, message, self.signer, self.config.owner_key)
            session.blobs.upload_limit = self._upload_limit
            backoff.reset()
            self._start_session(session)
            loops = (self._heartbeats(session), self._send_outbox(session))
            await session.serve(self._on_message, *loops)
        finally:
            self._session = None
            self._connected.clear()
            await channel.close()

    def _start_session(self, session: Session) -> None:
        welcome = session.welcome
        if welcome.node_id and welcome.node_id != self.node_id:
            _log.warning("coordinator calls this node %s, not %s", welcome.node_id, self.node_id)
        resumed = set(welcome.resumed_attempts)
        dropped = [a for a in self._tasks.attempt_ids() if a not in resumed]
        self._tasks.cancel(dropped, "the coordinator did not resume it")
        _log.info("connected to %s as node %s", self.config.coordinator, self.node_id)
        self._welcomed = self._reached = True
        self.standing = (welcome.standing or "active", welcome.standing_reason)
        self.earnings.credited(welcome.credited)
        if self.standing[0] != "active":
            what = {
                "pending": "waits for an operator to approve it (`sparegrid admin node approve`)",
                "quarantined": "is quarantined and gets no work until an operator reinstates it",
                "banned": "is banned and gets no work until an operator reinstates it",
            }.get(self.standing[0], f"is {self.standing[0]}")
            reason = f": {welcome.standing_reason}" if welcome.standing_reason else ""
            _log.warning("the coordinator says this node %s%s", what, reason)
        self._hint = ""
        self._session = session
        self._connected.set()
        if self._draining:
            session.post(worker_pb2.WorkerMessage(drain=worker_pb2.Drain()))
        self._flow.reset()
        for device in self.devices:
            self._grant(device.index)

    def _on_message(self, message: worker_pb2.CoordinatorMessage) -> None:
        body = message.WhichOneof("body")
        if body == "assign":
            for assignment in message.assign.assignments:
                self._flow.assigned(assignment.device_index, self._clock.monotonic())
                decision = self.decision(assignment.device_index)
                if decision is not None and not decision.may_work:
                    # leased before the coordinator heard that the device paused
                    self._preempted(assignment, decision)
                    continue
                self._since[assignment.attempt_id] = self._clock.monotonic()
                self._tasks.accept(assignment)
        elif body == "result_ack":
            self._on_ack(message.result_ack)
        elif body == "cancel":
            self._tasks.cancel(message.cancel.attempt_ids, message.cancel.reason)
        elif body == "credited":
            self.earnings.credited(message.credited.total)
        else:
            _log.warning("ignoring an unexpected %s message from the coordinator", body)

    def _on_ack(self, ack: worker_pb2.ResultAck) -> None:
        if not self._outbox.ack(ack.batch_id):
            _log.debug("ack for batch %d, which is not pending", ack.batch_id)
        taken = [v for v in ack.verdicts if v.accepted and v.code != VerdictCode.DUPLICATE]
        if taken:  # paid now or once validated: the credit comes in Credited messages
            self.earnings.took(len(taken))
        for verdict in ack.verdicts:
            if not verdict.accepted:
                _log.warning(
                    "result of attempt %s rejected: %s %s",
                    verdict.attempt_id,
                    verdict.code,
                    verdict.message,
                )

    def _held(self) -> list[str]:
        """Attempts this node holds: running, or finished and not yet acknowledged."""
        return self._tasks.attempt_ids() + self._batcher.attempt_ids() + self._outbox.attempt_ids()

    def _write_failed(self, exc: OSError) -> None:
        """The outbox could not be written: for want of room, every device pauses now (its
        running tasks handed back) rather than at the next look at the disk."""
        if self.disk.failed(exc):
            self._monitor.poke()

    async def _heartbeats(self, session: Session) -> None:
        clock = self._clock
        cadence = Cadence.asked(session.welcome, self.config.heartbeat_interval, clock.monotonic())
        while True:
            await clock.sleep(cadence.busy)
            holding = bool(self._held())
            if cadence.due(holding, clock.monotonic()):
                session.post(worker_pb2.WorkerMessage(heartbeat=worker_pb2.Heartbeat()))

    def lent_devices(self) -> tuple[DeviceInfo, ...]:
        """The devices as offered to the coordinator: memory scaled to --max-vram."""
        share = self.config.max_vram
        return tuple(
            dataclasses.replace(d, memory_bytes=int(d.memory_bytes * share)) for d in self.devices
        )


def _code(exc: grpc.aio.AioRpcError) -> str:
    return str(dict(exc.trailing_metadata() or ()).get(CODE_METADATA_KEY, ""))


def _refused(exc: grpc.aio.AioRpcError) -> bool:
    """The coordinator will refuse this worker until its volunteer acts: a newer worker
    (WORKER_TOO_OLD), or the owner key its node key answers to (NODE_OWNER_CHANGED)."""
    return _code(exc) in (ErrorCode.WORKER_TOO_OLD, ErrorCode.NODE_OWNER_CHANGED)
