"""The worker daemon: one session with the coordinator, a slot per device, an outbox.

`Worker.run()` keeps a session open (reconnecting with jittered backoff), runs the tasks
the coordinator assigns and sends their signed results until `shutdown()`: then it says
Drain, stops inviting work, finishes what it holds, waits for the acks (or the drain
timeout) and returns. See docs/protocol.md for the session protocol.
"""

import asyncio
import dataclasses
import logging
import random
import shutil
from collections import deque
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Any

import grpc
import grpc.aio

from sparegrid.v1 import common_pb2, worker_pb2
from sparegrid.wire import Signer
from sparegrid.wire.clock import Clock, SystemClock, local_time
from sparegrid.wire.codes import CODE_METADATA_KEY, ErrorCode, FailureCode, VerdictCode
from sparegrid.wire.receipt import MAX_INLINE_RESULT, decode_statement
from sparegrid.wire.tasklog import SUCCEEDED, sign_log
from sparegrid.wire.tls import hint as tls_hint
from sparegrid.worker.config import WorkerConfig
from sparegrid.worker.errors import BlobRejected, BlobUnavailable, SessionError
from sparegrid.worker.executors.registry import ExecutorRegistry
from sparegrid.worker.metrics import WorkerMetrics
from sparegrid.worker.node.devices import DeviceInfo, detect_devices
from sparegrid.worker.node.earnings import Earnings
from sparegrid.worker.node.identity import load_identity
from sparegrid.worker.node.snapshot import status_snapshot
from sparegrid.worker.node.status import RecentErrors, StatusServer
from sparegrid.worker.policy import (
    Decision,
    DeviceStateSource,
)
from sparegrid.worker.policy.disk import DiskGuard
from sparegrid.worker.policy.pause import ManualPause, PauseError
from sparegrid.worker.slots.attempts import Phase, Slot, TaskManager
from sparegrid.worker.slots.cache import BlobCache
from sparegrid.worker.slots.child.logfile import Redactor, node_paths
from sparegrid.worker.slots.child.protocol import Outcome, OutputData
from sparegrid.worker.slots.child.runner import DeviceRunner
from sparegrid.worker.slots.child.sandbox import Report
from sparegrid.worker.startup import (
    apply_power_cap,
    check_devices,
    check_isolation,
    choose_devices,
    make_monitor,
    policy_settings,
    sandbox_settings,
)
from sparegrid.worker.upstream.backoff import Backoff
from sparegrid.worker.upstream.batcher import ResultBatcher
from sparegrid.worker.upstream.flow import FlowWindow
from sparegrid.worker.upstream.heartbeat import Cadence
from sparegrid.worker.upstream.messages import hello, statement_bytes
from sparegrid.worker.upstream.outbox import Outbox, OutboxEntry, output_attempts
from sparegrid.worker.upstream.ratelimit import RateLimiter, throttle
from sparegrid.worker.upstream.session import Session, connect, open_channel, reconnect_delay

_log = logging.getLogger("sparegrid.worker")
# the limits `Worker.reload` (SIGHUP) takes into force without a restart
RELOADABLE = (
    "idle_seconds",
    "max_utilization",
    "max_other_memory_mib",
    "max_temp",
    "temp_hysteresis",
    "power_cap",
    "windows",
)
OUTPUT_REJECTED = "OUTPUT_REJECTED"
PREEMPTED = FailureCode.PREEMPTED.value  # by this node's policy: re-queued, not held against it
OVER_VRAM_SHARE = "OVER_VRAM_SHARE"  # the task needs more GPU memory than this node lends


class Worker:
    """The daemon. `devices` default to `detect_devices()`, `executors` to the built-ins
    plus plugins, `clock` to the system clock; tests pass fakes for each."""

    def __init__(
        self,
        config: WorkerConfig,
        devices: Sequence[DeviceInfo] | None = None,
        executors: ExecutorRegistry | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        device_state: DeviceStateSource | None = None,
    ) -> None:
        self.config = config
        if devices is None:
            devices = choose_devices(config, detect_devices()).devices
        self.devices = tuple(devices)
        check_devices(config, self.devices)
        self.signer: Signer = load_identity(config.data_dir)
        self.executors = executors if executors is not None else ExecutorRegistry.discover()
        self._clock = clock or SystemClock()
        self._rng = rng or random.Random()
        self._outbox = Outbox(config.data_dir)
        self._batcher = ResultBatcher(
            self.signer, self._outbox, self._clock, config.batch_window, config.batch_max
        )
        self._cache = BlobCache(config.data_dir / "cache", self._clock, max_bytes=config.cache_size)
        self._sandbox = sandbox_settings(config)
        self.isolation = Report()
        self._monitor = make_monitor(
            config,
            self.devices,
            device_state,
            self._clock,
            self._our_pids,
            self._device_busy,
        )
        self.pause = ManualPause(config.data_dir / "pause.json", self._clock)
        self._monitor.paused = self.pause.reason
        self.disk = DiskGuard(config.data_dir, config.min_free_disk, self._clock)
        self._monitor.disk_low = self.disk.reason
        self._batcher.write_failed = self._write_failed
        self._durations = {d.index: deque[float](maxlen=8) for d in self.devices}
        self._since: dict[str, float] = {}
        self._last_done: dict[int, float] = {}
        self.earnings = Earnings(config.data_dir / "earnings.json", self.wall_now)
        self.errors = RecentErrors()
        self.standing: tuple[str, str] = ("active", "")  # from the last Welcome
        self._status = StatusServer(config.status_path, self.status, self.control)
        self.metrics = WorkerMetrics(self)
        rate = config.max_download_rate
        self._download_limit = RateLimiter(rate, self._clock) if rate else None
        rate = config.max_upload_rate
        self._upload_limit = RateLimiter(rate, self._clock) if rate else None
        self._tasks = TaskManager(
            [Slot(d, self._runner(d)) for d in self.devices],
            self.executors,
            self._cache,
            self._fetch,
            self._report,
            self._released,
        )
        self._cache.in_use = self._tasks.needed_digests
        self._flow = FlowWindow(config.prefetch, (d.index for d in self.devices))
        self._owed: set[int] = set()
        self._session: Session | None = None
        self._connected = asyncio.Event()
        self._welcomed = False  # this attempt got as far as the coordinator's welcome
        self._drain_requested = asyncio.Event()
        self._stopped = asyncio.Event()
        self._hint = ""  # the likely cause of connection failures last logged
        self._draining = False
        self._forced = False

    @property
    def node_id(self) -> str:
        return self.signer.node_id

    def _runner(self, device: DeviceInfo) -> DeviceRunner:
        work_root = self.config.data_dir / "work" / str(device.index)
        targets = self.executors.targets()
        sandbox = None
        if self._sandbox is not None:
            sandbox = dataclasses.replace(self._sandbox, scratch=str(work_root))
        return DeviceRunner(
            device,
            targets,
            work_root,
            self.config.max_attempt_seconds,
            sandbox=sandbox,
            vram_share=self.config.max_vram,
            redact=Redactor(node_paths(self.config.data_dir, work_root)),
        )

    def _our_pids(self) -> set[int]:
        return {pid for s in self._tasks.slots.values() if (pid := s.runner.pid) is not None}

    def _device_busy(self, device: int) -> bool:
        slot = self._tasks.slots.get(device)
        return slot is not None and slot.runner.busy

    def decision(self, device: int) -> Decision | None:
        """What the policy says about a device now."""
        return self._monitor.decisions.get(device)

    def attempt_phases(self) -> dict[str, Phase]:
        """Each held attempt and where it is: fetching, queued or running."""
        return self._tasks.phases()

    def shutdown(self, force: bool = False) -> None:
        """Starts a graceful drain; `force` stops now, killing running tasks."""
        if force:
            self._forced = True
            self._stopped.set()
        self._drain_requested.set()

    async def run(self) -> None:
        shutil.rmtree(self.config.data_dir / "work", ignore_errors=True)
        pending = self._outbox.load()
        _log.info(
            "worker %s starting: %d device(s), %d batch(es) in the outbox",
            self.node_id,
            len(self.devices),
            pending,
        )
        if not self.config.owner_key:
            _log.warning(
                "this node has no owner account: its results are paid only once a node of "
                "an owner account has checked them, and never count as a vote (give it an "
                "account's API key with SPAREGRID_OWNER_KEY or --owner-key-file)"
            )
        self.isolation = await check_isolation(self.config)
        apply_power_cap(self.config, self._monitor.source, self.devices)
        logging.getLogger("sparegrid.worker").addHandler(self.errors)
        problem = await self._status.start()
        if problem:
            _log.warning("%s; `sparegrid worker status` will not reach this worker", problem)
        self._monitor.poll()  # the first decisions, before anything is leased
        if self.config.metrics_port is not None:
            await self.metrics.start(self.config.metrics_addr, self.config.metrics_port)
        for shown in status_snapshot(self)["devices"]:
            reason = f" ({shown['reason']})" if shown["reason"] else ""
            _log.info("device %d (%s): %s%s", shown["index"], shown["name"], shown["state"], reason)
        self._tasks.start()
        loops = [
            asyncio.create_task(self._connect_loop()),
            asyncio.create_task(self._drain()),
            asyncio.create_task(self._monitor.run(self._on_policy, self._grant_all)),
        ]
        try:
            await self._stopped.wait()
        finally:
            await self._stop(loops)

    async def _stop(self, loops: list[asyncio.Task[None]]) -> None:
        session = self._session
        if session is not None and not self._forced:
            await session.close(timeout=1.0)
        for loop in loops:
            loop.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
        await self._tasks.close(force=self._forced)
        await self._batcher.close()
        await self._cache.close()
        await self._status.close()
        await self.metrics.close()
        self._monitor.close()
        logging.getLogger("sparegrid.worker").removeHandler(self.errors)
        _log.info(
            "worker %s stopped; %d batch(es) left in the outbox; credit: %d in the "
            "coordinator's ledger, %+d today",
            self.node_id,
            len(self._outbox),
            self.earnings.total,
            self.earnings.today,
        )

    async def _drain(self) -> None:
        await self._drain_requested.wait()
        self._draining = True
        _log.info("draining: finishing %d held task(s)", len(self._tasks.attempt_ids()))
        if self._session is not None:
            self._session.post(worker_pb2.WorkerMessage(drain=worker_pb2.Drain()))
        await self._tasks.wait_idle()
        await self._batcher.flush()
        try:
            async with asyncio.timeout(self.config.drain_timeout):
                await self._outbox.wait_empty()
        except TimeoutError:
            _log.warning("drain timed out; %d batch(es) stay in the outbox", len(self._outbox))
        self._stopped.set()

    # -- the session --------------------------------------------------------------------

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
        self._welcomed = True
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

    # -- flow control (Credit messages: assignments invited, not money) ------------------

    def _grant(self, device: int) -> None:
        if self._draining or self._session is None or not self._may_lease(device):
            return
        count = self._flow.top_up(device, self._tasks.held(device), self._clock.monotonic())
        if count:
            credit = worker_pb2.Credit(device_index=device, count=count)
            self._session.post(worker_pb2.WorkerMessage(credit=credit))

    def _grant_all(self) -> None:
        for device in self.devices:
            self._grant(device.index)

    def _may_lease(self, device: int) -> bool:
        """The policy lets the device work, and a task can finish before its window closes."""
        decision = self.decision(device)
        if decision is None or not decision.may_work:
            return False
        return decision.window_left >= self.task_estimate(device)

    def task_estimate(self, device: int) -> float:
        """How long the next task may take: the longest of the last few, or the setting."""
        recent = self._durations.get(device)
        return max(recent) if recent else self.config.task_estimate

    def _revoke(self, device: int) -> None:
        self._flow.revoke(device)
        if self._session is not None:
            credit = worker_pb2.Credit(device_index=device, count=0, reset=True)
            self._session.post(worker_pb2.WorkerMessage(credit=credit))

    def _on_policy(self, device: int, decision: Decision) -> None:
        """The monitor saw a device change: lease again, or stop its work now."""
        if decision.may_work and not decision.over_vram:
            self._grant(device)
            return
        if not decision.may_work:
            self._revoke(device)
            reason = decision.mode.value + (f": {decision.reason}" if decision.reason else "")
            stopped = self._tasks.preempt(device, PREEMPTED, reason)
        else:  # the device may work, but its task uses more GPU memory than lent
            share = f"{self.config.max_vram:.0%}"
            reason = f"the task used more than the {share} of GPU memory this node lends"
            stopped = self._tasks.preempt(device, OVER_VRAM_SHARE, reason)
        if stopped:
            _log.warning(
                "device %d: stopped %d task(s) (%s)",
                device,
                len(stopped),
                reason,
                extra={"device": device, "attempts": stopped},
            )

    def _preempted(self, assignment: worker_pb2.Assignment, decision: Decision) -> None:
        reason = decision.mode.value + (f": {decision.reason}" if decision.reason else "")
        outcome = Outcome(0, code=PREEMPTED, message=reason, retryable=True)
        self._report(assignment, None, outcome)

    def _timed(self, device: int, since: float | None) -> None:
        """What the task cost the device: from its arrival, or the previous task's end if
        later (a busy device's time between results), for the flow window."""
        now = self._clock.monotonic()
        if since is not None:
            self._flow.finished(device, now - max(since, self._last_done.get(device, since)))
        self._last_done[device] = now

    def _released(self, device: int) -> None:
        """A task on `device` ended; grant its credit back once this burst of outcomes is in."""
        if not self._owed:
            asyncio.get_running_loop().call_soon(self._grant_owed)
        self._owed.add(device)

    def _grant_owed(self) -> None:
        owed, self._owed = self._owed, set()
        for device in sorted(owed):
            self._grant(device)

    # -- results --------------------------------------------------------------------------

    def _report(
        self, assignment: worker_pb2.Assignment, device: DeviceInfo | None, outcome: Outcome
    ) -> None:
        spec = self.executors.get(assignment.kind)
        since = self._since.pop(assignment.attempt_id, None)
        self.metrics.report(assignment.kind, device.index if device else None, outcome)
        if outcome.ok and device is not None:
            self._durations[device.index].append(outcome.duration_us / 1e6)
            self._timed(device.index, since)
        if not outcome.ok or device is None or spec is None:
            failure = worker_pb2.TaskFailure(
                attempt_id=assignment.attempt_id,
                code=outcome.code,
                message=outcome.message,
                retryable=outcome.retryable,
            )
            if outcome.log is not None:
                failure.log.CopyFrom(self._log_of(assignment, outcome.code, outcome.log))
            _log.info(
                "attempt %s failed: %s %s", assignment.attempt_id, outcome.code, outcome.message
            )
            self._batcher.add_failure(failure)
            return
        statement = statement_bytes(assignment, self.node_id, device, spec, outcome)
        inline, blobs = split_inline(outcome.outputs, self.config.inline_limit)
        log = None
        if assignment.keep_logs and outcome.log is not None:
            log = self._log_of(assignment, SUCCEEDED, outcome.log)
        self._batcher.add_result(statement, inline, blobs, log)

    def _log_of(
        self, assignment: worker_pb2.Assignment, outcome: str, text: bytes
    ) -> common_pb2.TaskLog:
        """The attempt's log (redacted by its runner), signed by this node."""
        a = assignment
        return sign_log(self.signer, a.job_id, a.task_id, a.attempt_id, outcome, text)

    async def _send_outbox(self, session: Session) -> None:
        """Sends every pending batch once per session, oldest first, as they appear."""
        sent: set[int] = set()
        while True:
            changed = self._outbox.change_event()
            for entry in self._outbox.pending():
                if entry.batch_id in sent:
                    continue
                sent.add(entry.batch_id)
                if await self._upload(session, entry):
                    session.post(entry.message)
            await changed.wait()

    async def _upload(self, session: Session, entry: OutboxEntry) -> bool:
        """Uploads the batch's large outputs; False if the coordinator refused one."""
        try:
            for digest, attempt_ids in output_attempts(entry.message).items():
                await session.blobs.upload(digest, self._outbox.blob_path(digest), attempt_ids)
        except BlobRejected as exc:
            self._give_up(entry, str(exc))
            return False
        return True

    def _give_up(self, entry: OutboxEntry, reason: str) -> None:
        """A batch that can never be delivered becomes failures for its attempts."""
        _log.error(
            "batch %d cannot be delivered (%s); reporting its tasks failed", entry.batch_id, reason
        )
        for data in entry.message.results.statements:
            attempt_id = decode_statement(data).attempt_id
            message = f"the coordinator refused an output upload: {reason}"
            self._batcher.add_failure(
                worker_pb2.TaskFailure(
                    attempt_id=attempt_id, code=OUTPUT_REJECTED, message=message, retryable=True
                )
            )
        self._outbox.ack(entry.batch_id)

    async def _fetch(self, digest: str, offset: int) -> AsyncIterator[bytes]:
        """Input bytes from the coordinator, waiting for a session if there is none."""
        await self._connected.wait()
        session = self._session
        if session is None:
            raise BlobUnavailable("the session ended before the download started")
        async for chunk in session.blobs.download(digest, offset):
            await throttle(self._download_limit, len(chunk))
            yield chunk

    # -- what the volunteer sees --------------------------------------------------------

    def lent_devices(self) -> tuple[DeviceInfo, ...]:
        """The devices as offered to the coordinator: memory scaled to --max-vram."""
        share = self.config.max_vram
        return tuple(
            dataclasses.replace(d, memory_bytes=int(d.memory_bytes * share)) for d in self.devices
        )

    def status(self) -> dict[str, Any]:
        snapshot = status_snapshot(self)
        snapshot["pause"] = self.pause.snapshot()
        snapshot["limits"] = {n: getattr(self.config, n) for n in RELOADABLE}
        return snapshot

    def reload(self, fresh: WorkerConfig) -> tuple[list[str], list[str]]:
        """Takes the limits of `fresh` (the settings read again, on SIGHUP) into force now;
        returns (the limits changed, the other settings changed: they wait for a restart)."""
        applied = [n for n in RELOADABLE if getattr(fresh, n) != getattr(self.config, n)]
        later = [
            f.name
            for f in dataclasses.fields(WorkerConfig)
            if f.compare
            and f.name not in RELOADABLE
            and getattr(fresh, f.name) != getattr(self.config, f.name)
        ]
        self.config = dataclasses.replace(self.config, **{n: getattr(fresh, n) for n in applied})
        self._monitor.settings = policy_settings(self.config, self._monitor.source)
        if "power_cap" in applied:
            apply_power_cap(self.config, self._monitor.source, self.devices)
        self._monitor.poke()
        _log.info(
            "settings reloaded: %s%s",
            ", ".join(f"{n} = {getattr(self.config, n)}" for n in applied) or "no limit changed",
            f"; {', '.join(later)} changed too: they take effect at the next start"
            if later
            else "",
        )
        return applied, later

    def control(self, command: dict[str, Any]) -> dict[str, Any]:
        """A checked command from the status socket: pause (seconds, or None: until
        resumed) or resume. The monitor applies it at once: running tasks are preempted."""
        answer: dict[str, Any] = {"ok": True}
        try:
            if "pause" in command:
                self.pause.pause(command["pause"])
            else:
                answer["was_paused"] = self.pause.resume()
        except PauseError as exc:
            return {"error": str(exc)}
        except OSError as exc:
            return {"error": f"cannot change the pause file: {exc}"}
        self._monitor.poke()
        answer["pause"] = self.pause.snapshot()
        return answer

    @property
    def connected(self) -> bool:
        return self._session is not None

    @property
    def draining(self) -> bool:
        return self._draining

    @property
    def device_state_name(self) -> str:
        return self._monitor.source.name

    @property
    def user_input_name(self) -> str:
        return self._monitor.user_input.name

    def monotonic(self) -> float:
        return self._clock.monotonic()

    def wall_now(self) -> datetime:
        return local_time(self._clock)

    def since(self, attempt_id: str, default: float) -> float:
        return self._since.get(attempt_id, default)

    def executor_pid(self, device: int) -> int | None:
        slot = self._tasks.slots.get(device)
        return slot.runner.pid if slot is not None else None

    def tasks_on(self, device: int) -> list[tuple[worker_pb2.Assignment, Phase]]:
        return self._tasks.attempts_on(device)


def split_inline(
    outputs: Sequence[OutputData], limit: int
) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """The outputs sent inline with their result (each at most `limit` bytes, all at most
    MAX_INLINE_RESULT: the coordinator refuses, and strikes, more), and those uploaded."""
    inline: dict[str, bytes] = {}
    blobs: dict[str, bytes] = {}
    carried = 0
    for o in outputs:
        if o.digest in inline or o.digest in blobs:
            continue
        if o.size <= limit and carried + o.size <= MAX_INLINE_RESULT:
            inline[o.digest] = o.data
            carried += o.size
        else:
            blobs[o.digest] = o.data
    return inline, blobs


def _code(exc: grpc.aio.AioRpcError) -> str:
    return str(dict(exc.trailing_metadata() or ()).get(CODE_METADATA_KEY, ""))


def _refused(exc: grpc.aio.AioRpcError) -> bool:
    """The coordinator will refuse this worker until someone acts (WORKER_TOO_OLD)."""
    return _code(exc) == ErrorCode.WORKER_TOO_OLD
