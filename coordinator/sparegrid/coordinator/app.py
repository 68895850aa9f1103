"""Wires the store and the services together and runs the coordinator's background work."""

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from sparegrid.coordinator.blobs import BlobStore
from sparegrid.coordinator.clock import Clock, SystemClock
from sparegrid.coordinator.kinds import BUILTIN_KINDS
from sparegrid.coordinator.services.accounts import Accounts
from sparegrid.coordinator.services.jobs import Jobs, JobsConfig
from sparegrid.coordinator.services.ledger import Ledger
from sparegrid.coordinator.services.results import Intake
from sparegrid.coordinator.services.scheduler import Scheduler, SchedulerConfig
from sparegrid.coordinator.store.base import Store

log = logging.getLogger("sparegrid.coordinator")


@dataclass
class Settings:
    data_dir: Path
    heartbeat_seconds: float = 5.0
    lease_seconds: float = 30.0
    reconnect_grace_seconds: float = 10.0
    reap_interval_seconds: float = 1.0
    max_blob_size: int = 16 << 30
    prices: dict[str, int] = field(default_factory=lambda: {"echo": 1, "checksum": 1})
    default_max_attempts: int = 3


class App:
    """Everything the servicers need; all of it runs on the event loop's thread."""

    def __init__(self, store: Store, settings: Settings, clock: Clock | None = None) -> None:
        self.store = store
        self.settings = settings
        self.clock = clock or SystemClock()
        self.blobs = BlobStore(settings.data_dir / "blobs", settings.max_blob_size)
        self.ledger = Ledger(store, self.clock)
        self.accounts = Accounts(store, self.ledger, self.clock)
        self.scheduler = Scheduler(
            store,
            self.ledger,
            self.clock,
            SchedulerConfig(
                lease_seconds=settings.lease_seconds,
                reconnect_grace_seconds=settings.reconnect_grace_seconds,
            ),
            on_change=self._changed,
        )
        self.intake = Intake(self.scheduler, self.blobs)
        self.jobs = Jobs(
            store,
            self.ledger,
            self.scheduler,
            self.blobs,
            {k.name: k for k in BUILTIN_KINDS},
            self.clock,
            JobsConfig(prices=settings.prices, default_max_attempts=settings.default_max_attempts),
        )
        self.session_tokens: dict[str, str] = {}  # token -> node id
        self._watchers: dict[str, set[asyncio.Event]] = defaultdict(set)
        self._kick_pending = False
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self.scheduler.load()
        self._tasks.append(asyncio.create_task(self._reaper()))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.store.close()

    def kick(self) -> None:
        """Asks for a dispatch pass soon; many kicks in one loop turn make one pass."""
        if not self._kick_pending:
            self._kick_pending = True
            asyncio.get_running_loop().call_soon(self._dispatch)

    def _dispatch(self) -> None:
        self._kick_pending = False
        try:
            self.scheduler.dispatch()
        except Exception:
            log.exception("dispatch pass failed; retrying at the next reap")

    async def _reaper(self) -> None:
        while True:
            await asyncio.sleep(self.settings.reap_interval_seconds)
            try:
                self.scheduler.reap()
                self.scheduler.dispatch()
            except Exception:
                log.exception("reaping expired leases failed")

    def watch(self, job_id: str) -> asyncio.Event:
        event = asyncio.Event()
        self._watchers[job_id].add(event)
        return event

    def unwatch(self, job_id: str, event: asyncio.Event) -> None:
        watchers = self._watchers.get(job_id)
        if watchers is not None:
            watchers.discard(event)
            if not watchers:
                del self._watchers[job_id]

    def _changed(self, job_ids: Iterable[str]) -> None:
        for job_id in job_ids:
            for event in self._watchers.get(job_id, ()):
                event.set()
