"""Wires the store and the services together and runs the coordinator's background work."""

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from sparegrid.coordinator.blobs import BlobStore
from sparegrid.coordinator.clock import Clock, SystemClock
from sparegrid.coordinator.domain import Account, Job
from sparegrid.coordinator.errors import CoordinatorError, ErrorKind
from sparegrid.coordinator.kinds import BUILTIN_KINDS
from sparegrid.coordinator.services.accounts import Accounts
from sparegrid.coordinator.services.canaries import CANARY_ACCOUNT, Canaries, CanaryConfig
from sparegrid.coordinator.services.comparators import Comparators
from sparegrid.coordinator.services.identity import Identities, IdentityConfig
from sparegrid.coordinator.services.jobs import Jobs, JobsConfig, JobSpec, Price
from sparegrid.coordinator.services.ledger import Ledger
from sparegrid.coordinator.services.quotas import QuotaConfig, Quotas
from sparegrid.coordinator.services.reputation import Reputations, TrustConfig
from sparegrid.coordinator.services.results import Intake
from sparegrid.coordinator.services.scheduler import Scheduler, SchedulerConfig
from sparegrid.coordinator.services.settlement import Settlement
from sparegrid.coordinator.services.spotcheck import SpotChecks, SpotConfig
from sparegrid.coordinator.services.sweeper import SweepConfig, Sweeper, Swept
from sparegrid.coordinator.services.verification import Verifier
from sparegrid.coordinator.services.vouching import VouchConfig, Vouching
from sparegrid.coordinator.services.waits import WaitLimit
from sparegrid.coordinator.store.base import Store
from sparegrid.coordinator.submit import Pacer, Submitter
from sparegrid.wire import Signer

log = logging.getLogger("sparegrid.coordinator")

T = TypeVar("T")
ADOPT_STEP = 5000  # blob files recorded in one step of a sweep


class BufferedSink(Protocol):
    """A worker's outgoing messages, held until the group commit they belong to."""

    def flush(self) -> None: ...

    def discard(self) -> None: ...

    def close(self) -> None: ...


@dataclass
class Settings:
    data_dir: Path
    heartbeat_seconds: float = 5.0
    lease_seconds: float = 30.0
    reconnect_grace_seconds: float = 10.0
    reap_interval_seconds: float = 1.0
    max_attempt_seconds: float = 3600.0
    max_blob_size: int = 16 << 30
    # credit per work units, by kind: an echo task is 1 unit, a checksum 1 per byte, an
    # inference shard 1 per GFLOP of its program over its samples, a render task 1 per
    # pixel x sample (a 1920x1080 frame at 128 samples: 27 credit)
    prices: dict[str, Price] = field(
        default_factory=lambda: {
            "echo": Price(1),
            "checksum": Price(1, 1 << 20),
            "inference": Price(1, 100),
            "render": Price(1, 10_000_000),
            # per 1,000 weighted tokens: a prompt token 1, a generated one 4 (kinds/generate.py)
            "generate": Price(1, 1000),
        }
    )
    default_max_attempts: int = 3
    # a job of more tasks is written a slice per group commit (submit.py), and one ending
    # with more queued tasks has them cancelled likewise (Scheduler.sweep)
    bulk_above: int = 2000
    # a job none of whose tasks any connected node can take fails after this long, with
    # the reason it waits as its error (services/waits.py); 0: it waits for ever
    wait_limit_seconds: float = 86400.0
    trust: TrustConfig = field(default_factory=TrustConfig)
    canaries: CanaryConfig = field(default_factory=CanaryConfig)
    spot_checks: SpotConfig = field(default_factory=SpotConfig)
    identity: IdentityConfig = field(default_factory=IdentityConfig)
    vouching: VouchConfig = field(default_factory=VouchConfig)
    quotas: QuotaConfig = field(default_factory=QuotaConfig)
    sweeps: SweepConfig = field(default_factory=SweepConfig)

    @property
    def key_path(self) -> Path:
        """The coordinator's Ed25519 key, which countersigns accepted results. Several
        coordinators over one database share it."""
        return self.data_dir / "coordinator.key"


class App:
    """Everything the servicers need; all of it runs on the event loop's thread."""

    def __init__(self, store: Store, settings: Settings, clock: Clock | None = None) -> None:
        self.store = store
        self.settings = settings
        self.clock = clock or SystemClock()
        self.blobs = BlobStore(settings.data_dir / "blobs", settings.max_blob_size)
        self.ledger = Ledger(store, self.clock)
        self.accounts = Accounts(store, self.ledger, self.clock)
        self.signer = Signer.load_or_create(settings.key_path)
        self.reputations = Reputations(store, self.clock, settings.trust)
        self.identities = Identities(store, self.ledger, self.clock, settings.identity)
        self.spot_checks = SpotChecks(settings.spot_checks, read=self._read_output)
        self.scheduler = Scheduler(
            store,
            self.ledger,
            self.clock,
            SchedulerConfig(
                lease_seconds=settings.lease_seconds,
                reconnect_grace_seconds=settings.reconnect_grace_seconds,
                max_attempt_seconds=settings.max_attempt_seconds,
                sweep_above=settings.bulk_above,
            ),
            on_change=self._changed,
            blocked=self.reputations.blocked,
            check_params=self.spot_checks.params_for,
            vetted=self.identities.vetted,
            proven=lambda node_id: self.reputations.get(node_id).validated,
        )
        self.verifier = Verifier(self.reputations, Comparators(), self.identities.vetted)
        self.canaries = Canaries(store, self.ledger, self.scheduler, self.clock, settings.canaries)
        self.intake = Intake(
            self.scheduler,
            self.blobs,
            Settlement(
                self.scheduler,
                self.verifier,
                self.signer,
                self.canaries,
                self.identities,
                Vouching(self.clock, settings.vouching, self.reputations.check_rate),
            ),
        )
        self.jobs = Jobs(
            store,
            self.ledger,
            self.scheduler,
            self.blobs,
            {k.name: k for k in BUILTIN_KINDS},
            self.clock,
            JobsConfig(
                prices=settings.prices,
                default_max_attempts=settings.default_max_attempts,
                voters=self._voters,
            ),
        )
        self.quotas = Quotas(store, self.clock, settings.quotas)
        self.sweeper = Sweeper(
            store,
            self.blobs,
            self.clock,
            settings.sweeps,
            connected=lambda: set(self.scheduler.sessions),
            nodes_deleted=self.reputations.load,
        )
        self.submitter = Submitter(self.jobs, store, self, settings.bulk_above)
        self.waits = WaitLimit(self.scheduler, self.clock, settings.wait_limit_seconds)
        self._sweep_wanted = asyncio.Event()
        self.session_tokens: dict[str, str] = {}  # token -> node id
        self.sinks: set[BufferedSink] = set()  # every connected worker's way down
        self._watchers: dict[str, set[asyncio.Event]] = defaultdict(set)
        self._inbox: list[tuple[Callable[[], Any], asyncio.Future[Any]]] = []
        self._group_scheduled = False
        self._kick_pending = False
        self.last_group_seconds = 0.0  # how long the last group commit held the loop
        self._stopped = False
        self._tasks: list[asyncio.Task[None]] = []

    def _voters(self) -> int:
        """Accounts whose nodes' results would count as votes (for a quorum's check)."""
        return sum(
            1
            for account in self.store.list_accounts()
            if account.name != CANARY_ACCOUNT and self.identities.vetted(account.name)
        )

    def start_services(self) -> None:
        """Loads what the services keep in memory from the store (no background work)."""
        self.reputations.load()
        self.identities.load()
        discarded = self.jobs.discard_unfinished()
        if discarded:
            log.warning("deleted %d job(s) whose submit a stop cut short", discarded)
        self.scheduler.load()
        self.canaries.load()

    def start(self) -> None:
        self.start_services()
        self._tasks.append(asyncio.create_task(self._reaper()))
        self._tasks.append(asyncio.create_task(self._sweeps()))
        self._tasks.append(asyncio.create_task(self._cancel_sweeps()))
        self._sweep_wanted.set()  # ended jobs a stop left unswept

    async def submit(self, account: Account, spec: JobSpec) -> Job:
        """Submits a job without holding the event loop long (submit.py); resolves once
        the job is durable."""
        return await self.submitter.submit(account, spec)

    async def stop(self) -> None:
        self._stopped = True
        await self.submitter.stop()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.store.close()

    def call(self, fn: Callable[[], T]) -> "asyncio.Future[T]":
        """Runs `fn` in the next group commit; the future resolves once it is durable.

        Everything queued during one turn of the event loop runs in one transaction, each
        call in a savepoint of its own, followed by a dispatch pass if one was asked for.
        Messages to workers are held back until the commit, so no node hears of a lease,
        and no acknowledgement leaves, before it is on disk.
        """
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._inbox.append((fn, future))
        self._schedule()
        return future

    def kick(self) -> None:
        """Asks for a dispatch pass in the next group commit."""
        self._kick_pending = True
        self._schedule()

    def _schedule(self) -> None:
        if not self._group_scheduled:
            self._group_scheduled = True
            asyncio.get_running_loop().call_soon(self._commit_group)

    def _commit_group(self) -> None:
        began = time.perf_counter()
        try:
            self._run_group()
        finally:
            self.last_group_seconds = time.perf_counter() - began

    def _run_group(self) -> None:
        self._group_scheduled = False
        items, self._inbox = self._inbox, []
        if self._stopped:  # shutting down: the store is closed, nothing more happens
            for _, future in items:
                if not future.done():
                    future.cancel()
            return
        done: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        try:
            with self.store.transaction():
                for fn, future in items:
                    try:
                        with self.store.transaction():
                            done.append((future, fn(), None))
                    except Exception as exc:
                        done.append((future, None, exc))
                if self._kick_pending:
                    self._kick_pending = False
                    self.scheduler.dispatch()
        except Exception as exc:  # the commit failed: nothing in this group happened
            log.exception("group commit of %d call(s) failed", len(items))
            self.reputations.load()
            self.identities.load()
            self.scheduler.resync()
            self.canaries.load()
            for sink in self.sinks:  # workers reconnect and grant their credit afresh
                sink.discard()
                sink.close()
            failure = CoordinatorError(
                ErrorKind.ABORTED, "STORE_UNAVAILABLE", f"the coordinator's store failed: {exc}"
            )
            for _, future in items:
                if not future.done():
                    future.set_exception(failure)
            return
        for sink in self.sinks:
            sink.flush()
        if self.scheduler.sweeps:
            self._sweep_wanted.set()
        for future, value, error in done:
            if future.done():
                continue
            if error is None:
                future.set_result(value)
            else:
                future.set_exception(error)

    async def _reaper(self) -> None:
        while True:
            await asyncio.sleep(self.settings.reap_interval_seconds)
            try:
                await self.call(self._reap)
            except Exception:
                log.exception("reaping expired leases failed")
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
                    log.exception("sweeping the tasks of ended jobs failed")
                    await asyncio.sleep(self.settings.reap_interval_seconds)

    def _reap(self) -> None:
        self.scheduler.reap()
        self.intake.settle_stranded()
        self.waits.check()

    async def _sweeps(self) -> None:
        first = True
        while True:
            await asyncio.sleep(self.settings.sweeps.interval)
            try:
                await self.sweep(adopt=first)
                first = False
            except Exception:
                log.exception("the storage sweep failed; the next one tries again")

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

    def _read_output(self, digest: str) -> bytes | None:
        """A result's output: kept inline in the store, or a blob; None when neither."""
        data = self.store.get_inline_blob(digest)
        if data is None and self.blobs.size(digest) is not None:
            data = self.blobs.path(digest).read_bytes()
        return data

    def _changed(self, job_ids: Iterable[str]) -> None:
        for job_id in job_ids:
            for event in self._watchers.get(job_id, ()):
                event.set()
