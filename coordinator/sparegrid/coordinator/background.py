"""The App's background loops: reaping expired leases, sweeping ended jobs and storage,
delivering webhooks, writing when nodes were last seen, refreshing planner statistics."""

import asyncio
import functools
import logging
import sys
from concurrent.futures import ThreadPoolExecutor

from sparegrid.coordinator.blobs import BlobStore
from sparegrid.coordinator.clock import Clock
from sparegrid.coordinator.domain import Delivery
from sparegrid.coordinator.errors import CoordinatorError, ErrorKind
from sparegrid.coordinator.groupcommit import GroupCommit
from sparegrid.coordinator.services.results import Intake
from sparegrid.coordinator.services.sweeper import Sweeper, Swept
from sparegrid.coordinator.services.waits import WaitLimit
from sparegrid.coordinator.services.webhooks import (
    CALL_THREADS,
    Webhooks,
    account_secret,
    post,
    public_error,
)
from sparegrid.coordinator.settings import Settings
from sparegrid.coordinator.store.base import StoreUnavailable
from sparegrid.coordinator.submit import Pacer
from sparegrid.wire import Signer

log = logging.getLogger("sparegrid.coordinator")


def log_failure(what: str) -> None:
    """Logs the exception being handled by a background loop. A lost database is logged
    once where it was met (`lost the database: ...`, groupcommit.py) and is an outage, not
    a bug: each loop that meets it after says so in one line, with no traceback."""
    exc = sys.exc_info()[1]
    lost = isinstance(exc, StoreUnavailable) or (
        isinstance(exc, CoordinatorError) and exc.kind == ErrorKind.UNAVAILABLE
    )
    if lost:
        log.warning("%s (the database is lost)", what)
    else:
        log.exception(what)


ADOPT_STEP = 5000  # blob files recorded in one step of a sweep
STALL_SECONDS = 2.0  # a reaper pass later than this past its interval skips (_reaper)


class PassClock:
    """Whether a reaper pass is more than STALL_SECONDS late by monotonic time (the process
    was stopped: a paused VM, SIGSTOP, a swap storm): it skips, once. (Steps of the wall
    clock are followed by every group commit: groupcommit.py's WallSteps.)"""

    def __init__(self, clock: Clock, interval: float) -> None:
        self._clock, self._interval = clock, interval
        self._mono = clock.monotonic()
        self._skipped = False

    def late(self) -> bool:
        mono = self._clock.monotonic()
        took, self._mono = mono - self._mono, mono
        self._skipped = took > self._interval + STALL_SECONDS and not self._skipped
        return self._skipped


class Background(GroupCommit):
    """The loops `App.start` starts, each a task of its own, and what they call; App
    holds the services and the state named here."""

    settings: Settings
    clock: Clock
    signer: Signer
    blobs: BlobStore
    intake: Intake
    waits: WaitLimit
    webhooks: Webhooks
    sweeper: Sweeper
    seen: dict[str, float]
    _webhook_calls: ThreadPoolExecutor

    async def _reaper(self) -> None:
        interval = self.settings.reap_interval_seconds
        passes = PassClock(self.clock, interval)
        while True:
            await asyncio.sleep(interval)
            # A late pass means the process was stopped, and the heartbeats that renewed
            # its leases meanwhile wait unread in its sockets: expiring first held its own
            # stall against healthy nodes (their windows halved, kept off their jobs). One
            # pass is left out to read them. (A step of the wall clock is followed at the
            # start of every group commit, this one's included: groupcommit.py.)
            if not self.serving:
                continue
            try:
                await self.call(lambda: self._pass(passes))
            except Exception:
                log_failure("reaping expired leases failed")
            self.kick()

    async def _cancel_sweeps(self) -> None:
        """Marks the queued tasks of large jobs that ended cancelled, a slice per group
        commit (Scheduler.sweep)."""
        pacer = Pacer()
        while True:
            await self._sweep_wanted.wait()
            self._sweep_wanted.clear()
            while self.scheduler.sweeps:
                try:
                    await self.call(lambda: self.scheduler.sweep(pacer.size))
                    pacer.adjust(self.last_group_seconds)
                except Exception:
                    log_failure("sweeping the tasks of ended jobs failed")
                    await asyncio.sleep(self.settings.reap_interval_seconds)

    async def _deliver_webhooks(self) -> None:
        """Posts the webhook calls that are due, a few at a time, each on a thread; the
        outcome of each is recorded (services/webhooks.py)."""
        while True:
            await asyncio.sleep(self.settings.webhooks.interval)
            if not self.webhooks.wanted():
                continue
            try:
                due = await self.call(lambda: self.webhooks.due(CALL_THREADS))
                if due:
                    await asyncio.gather(*(self._deliver(d) for d in due))
            except Exception:
                log_failure("delivering webhooks failed; the next round tries again")

    async def _deliver(self, delivery: Delivery) -> None:
        secret = account_secret(self.signer, delivery.account_id)
        loop = asyncio.get_running_loop()
        # not the default executor: uploads, estimates and pages must not wait for receivers
        error = await loop.run_in_executor(
            self._webhook_calls, post, delivery, secret, self.settings.webhooks
        )
        if error:  # the receiver picks its status line: kept short and printable here too
            log.warning(
                "webhook for job %s (try %d) failed: %s",
                delivery.job_id,
                delivery.attempts + 1,
                public_error(error),
            )
        await self.call(lambda: self.webhooks.outcome(delivery, error))

    def _pass(self, passes: PassClock) -> None:
        """One reaper pass; a late one skips."""
        if not passes.late():
            self._reap()

    def _reap(self) -> None:
        self.scheduler.reap()
        self.scheduler.rescan()
        self.intake.settle_stranded()
        self.waits.check()
        self.events.trim()

    def saw(self, node_id: str) -> None:
        """A heartbeat of a connected node: its last_seen, in memory until the next write."""
        session = self.scheduler.sessions.get(node_id)
        now = self.clock.now()
        if session is not None:
            session.node.last_seen = now
        self.seen[node_id] = now

    def write_seen(self) -> int:
        """Writes the last_seen of every node heard from since the last write, in one
        statement; returns how many."""
        seen = dict(self.seen)
        self._touch(seen)
        self._written(seen)
        return len(seen)

    def _touch(self, seen: dict[str, float]) -> None:
        if seen:
            with self.store.transaction():
                self.store.touch_nodes(seen)

    def _written(self, seen: dict[str, float]) -> None:
        """Forgets what is durable now; a heartbeat heard meanwhile stays for next time."""
        for node_id, when in seen.items():
            if self.seen.get(node_id) == when:
                del self.seen[node_id]

    async def _write_seen(self) -> None:
        while True:
            await asyncio.sleep(self.settings.last_seen_flush_seconds)
            seen = dict(self.seen)
            try:
                await self.call(functools.partial(self._touch, seen))
                self._written(seen)
            except Exception:
                log_failure("writing when nodes were last seen failed; kept for the next try")

    async def _statistics(self) -> None:
        while True:
            await asyncio.sleep(self.settings.statistics_seconds)
            if not self.serving:
                continue
            try:
                refreshed = await asyncio.to_thread(self.store.refresh_statistics)
            except Exception as exc:  # the next round tries again; nothing waits on it
                log.warning("refreshing the database's planner statistics failed: %s", exc)
            else:
                if refreshed:
                    log.debug("planner statistics refreshed: %s", ", ".join(refreshed))

    async def _sweeps(self) -> None:
        first = True
        while True:
            await asyncio.sleep(self.settings.sweeps.interval)
            if not self.serving:
                continue
            try:
                await self.sweep(adopt=first)
                first = False
            except Exception:
                log_failure("the storage sweep failed; the next one tries again")

    async def sweep(self, adopt: bool = False) -> Swept:
        """Deletes what has expired: unfinished uploads, blobs no job needs, nodes that
        never worked. The disk is walked in worker threads, the store's steps run on the
        event loop between other work. `adopt` first records blob files the store does not
        know (blobs stored before they were recorded), as the first sweep after a start
        does."""
        sweeper, blobs = self.sweeper, self.blobs
        swept = Swept()
        swept.partials = sweeper.expire_partials(await asyncio.to_thread(blobs.partials))
        if adopt:
            files = await asyncio.to_thread(blobs.stored)
            for start in range(0, len(files), ADOPT_STEP):
                sweeper.adopt(files[start : start + ADOPT_STEP])
                await asyncio.sleep(0)
        for _ in sweeper.collect_blobs(swept):
            await asyncio.sleep(0)
        sweeper.expire_charges()
        while True:  # nodes registered by the thousand: as many steps as they take
            pruned = sweeper.prune_nodes()
            swept.nodes += pruned
            if pruned < sweeper.config.page:
                break
            await asyncio.sleep(0)
        await asyncio.to_thread(blobs.empty_trash)
        return swept
