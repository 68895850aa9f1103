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
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sparegrid.v1 import worker_pb2
from sparegrid.wire import Signer
from sparegrid.wire.clock import Clock, SystemClock, local_time
from sparegrid.worker.config import WorkerConfig
from sparegrid.worker.daemon_session import WorkerSession
from sparegrid.worker.executors.registry import ExecutorRegistry
from sparegrid.worker.metrics import WorkerMetrics
from sparegrid.worker.node.devices import DeviceInfo, detect_devices
from sparegrid.worker.node.earnings import Earnings
from sparegrid.worker.node.identity import load_identity
from sparegrid.worker.node.snapshot import status_snapshot
from sparegrid.worker.node.status import RecentErrors, StatusServer
from sparegrid.worker.policy import DeviceStateSource
from sparegrid.worker.policy.disk import DiskGuard
from sparegrid.worker.policy.pause import ManualPause, PauseError
from sparegrid.worker.slots.attempts import Phase, Slot, TaskManager
from sparegrid.worker.slots.cache import BlobCache
from sparegrid.worker.slots.child.logfile import Redactor, node_paths
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
from sparegrid.worker.upstream.batcher import ResultBatcher
from sparegrid.worker.upstream.flow import FlowWindow
from sparegrid.worker.upstream.outbox import Outbox
from sparegrid.worker.upstream.ratelimit import RateLimiter
from sparegrid.worker.upstream.session import Session

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


class Worker(WorkerSession):
    """The daemon. `devices` default to `detect_devices()`, `executors` to the built-ins
    plus plugins, `clock` to the system clock; tests pass fakes for each. Its session is
    in daemon_session.py, its results in daemon_results.py, its Credit grants in
    daemon_flow.py."""

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
        self._reached = False  # some attempt of this run did
        self._refusal = ""  # why the coordinator refused this run's last attempt, if it did
        self._drain_requested = asyncio.Event()
        self._stopped = asyncio.Event()
        self._hint = ""  # the likely cause of connection failures last logged
        self._draining = False
        self._forced = False

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
            "worker %s starting: %d device(s), %d batch(es) in the outbox; takes %s jobs",
            self.node_id,
            len(self.devices),
            pending,
            self.executors.describe(),
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
            await self.metrics.start(
                self.config.metrics_addr, self.config.metrics_port, self.config.metrics_hosts
            )
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
        stopped = len(self._tasks.attempt_ids())  # a drain leaves none; a forced stop may
        await self._tasks.close(force=self._forced)
        await self._batcher.close()
        self.earnings.flush()
        await self._cache.close()
        await self._status.close()
        await self.metrics.close()
        self._monitor.close()
        logging.getLogger("sparegrid.worker").removeHandler(self.errors)
        running = (
            f"; {stopped} running task(s) stopped (the coordinator runs them again)"
            if stopped
            else ""
        )
        credit = (
            f"credit: {self.earnings.total} in the coordinator's ledger, "
            f"{self.earnings.today:+d} today"
            if self._reached
            else f"the coordinator at {self.config.coordinator} refused it: {self._refusal}"
            if self._refusal
            else f"it never reached the coordinator at {self.config.coordinator}"
        )
        _log.info(
            "worker %s stopped; %d batch(es) left in the outbox%s; %s",
            self.node_id,
            len(self._outbox),
            running,
            credit,
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

    # -- what the volunteer sees --------------------------------------------------------

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
