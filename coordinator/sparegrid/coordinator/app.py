"""Wires the store and the services together and runs the coordinator's background work."""

import asyncio
import contextlib
import functools
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from sparegrid.coordinator.blobs_s3 import open_blobs
from sparegrid.coordinator.clock import Clock, SystemClock
from sparegrid.coordinator.domain import Account, Delivery, Job
from sparegrid.coordinator.errors import CoordinatorError, ErrorKind, store_unavailable
from sparegrid.coordinator.kinds import BUILTIN_KINDS
from sparegrid.coordinator.services.accounts import Accounts
from sparegrid.coordinator.services.admission import Admission, AdmissionConfig
from sparegrid.coordinator.services.canaries import CANARY_ACCOUNT, Canaries, CanaryConfig
from sparegrid.coordinator.services.comparators import Comparators
from sparegrid.coordinator.services.events import EventConfig, Events
from sparegrid.coordinator.services.identity import Identities, IdentityConfig
from sparegrid.coordinator.services.invites import Invites, SignupConfig
from sparegrid.coordinator.services.jobs import (
    DEFAULT_PRICES,
    Jobs,
    JobsConfig,
    JobSpec,
    Price,
)
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
from sparegrid.coordinator.services.webhooks import (
    CALL_THREADS,
    WebhookConfig,
    Webhooks,
    account_secret,
    check_url,
    post,
)
from sparegrid.coordinator.store.base import Store, StoreTaken, StoreUnavailable
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


STALL_SECONDS = 2.0  # a reaper pass later than this past its interval skips (App._reaper)


@dataclass
class Settings:
    data_dir: Path
    heartbeat_seconds: float = 10.0
    # a node holding no task heartbeats this often: it renews nothing, and each heartbeat
    # costs gRPC and the event loop about 0.2 ms whatever it carries (gRPC's keepalive
    # pings, every 30 s, find a dead connection meanwhile)
    idle_heartbeat_seconds: float = 60.0
    lease_seconds: float = 30.0
    reconnect_grace_seconds: float = 10.0
    reap_interval_seconds: float = 1.0
    max_attempt_seconds: float = 3600.0
    max_blob_size: int = 16 << 30
    # where finished blobs live: "local" (DATA_DIR/blobs) or s3://BUCKET[/PREFIX]
    blobs: str = "local"
    # with blobs in a bucket: local copies kept for code that needs a file (blobs_s3.py)
    blob_cache_size: int = 10 << 30
    # credit per work units, by kind (jobs.DEFAULT_PRICES says what each unit is)
    prices: dict[str, Price] = field(default_factory=lambda: dict(DEFAULT_PRICES))
    default_max_attempts: int = 3
    # a job of more tasks is written a slice per group commit (submit.py), and one ending
    # with more queued tasks has them cancelled likewise (Scheduler.sweep)
    bulk_above: int = 2000
    # a job none of whose tasks any connected node can take fails after this long, with
    # the reason it waits as its error (services/waits.py); 0: it waits for ever
    wait_limit_seconds: float = 86400.0
    # workers reporting an older sparegrid are refused at session start, told why; "": any
    min_worker_version: str = ""
    trust: TrustConfig = field(default_factory=TrustConfig)
    canaries: CanaryConfig = field(default_factory=CanaryConfig)
    spot_checks: SpotConfig = field(default_factory=SpotConfig)
    identity: IdentityConfig = field(default_factory=IdentityConfig)
    vouching: VouchConfig = field(default_factory=VouchConfig)
    quotas: QuotaConfig = field(default_factory=QuotaConfig)
    sweeps: SweepConfig = field(default_factory=SweepConfig)
    # Heartbeats move a node's last_seen in memory; it is written for all nodes at once
    # this often, and at a clean stop. A crash loses at most this much of it.
    last_seen_flush_seconds: float = 30.0
    # how often the tables that changed much get fresh planner statistics (PostgreSQL:
    # ANALYZE, on a connection of its own, off the event loop; see Store.refresh_statistics)
    statistics_seconds: float = 10.0
    admission: AdmissionConfig = field(default_factory=AdmissionConfig)
    events: EventConfig = field(default_factory=EventConfig)
    # tasks one account may run at once over all its jobs (0: no cap)
    max_running_per_account: int = 0
    webhooks: WebhookConfig = field(default_factory=WebhookConfig)
    # signups with an invitation code: attempts allowed per caller address
    signups: SignupConfig = field(default_factory=SignupConfig)

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
        self.signer = Signer.load_or_create(settings.key_path)
        # coordinators over one database share the key, and so their marks on blobs
        self.blobs = open_blobs(
            settings.blobs,
            settings.data_dir / "blobs",
            settings.max_blob_size,
            settings.blob_cache_size,
            holder=self.signer.public_key.hex()[:32],
        )
        self.events = Events(store, self.clock, settings.events)
        self.ledger = Ledger(store, self.clock)
        self.accounts = Accounts(store, self.ledger, self.clock)
        self.invites = Invites(store, self.accounts, self.events, self.clock, settings.signups)
        self.reputations = Reputations(store, self.clock, settings.trust)
        self.identities = Identities(store, self.ledger, self.clock, settings.identity)
        self.spot_checks = SpotChecks(settings.spot_checks, read=self._read_output)
        self.webhooks = Webhooks(store, self.clock, settings.webhooks)
        self._webhook_calls = ThreadPoolExecutor(CALL_THREADS, thread_name_prefix="webhook")
        self.scheduler = Scheduler(
            store,
            self.ledger,
            self.clock,
            SchedulerConfig(
                lease_seconds=settings.lease_seconds,
                reconnect_grace_seconds=settings.reconnect_grace_seconds,
                max_attempt_seconds=settings.max_attempt_seconds,
                sweep_above=settings.bulk_above,
                max_running_per_account=settings.max_running_per_account,
            ),
            on_change=self._changed,
            blocked=self.reputations.blocked,
            check_params=self.spot_checks.params_for,
            vetted=self.identities.vetted,
            proven=lambda node_id: self.reputations.get(node_id).validated,
            ended=self._job_ended,
        )
        self.verifier = Verifier(self.reputations, Comparators(), self.identities.vetted)
        self.canaries = Canaries(store, self.ledger, self.scheduler, self.clock, settings.canaries)
        self.quotas = Quotas(store, self.clock, settings.quotas)
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
            self.quotas,
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
                check_webhook=lambda url: check_url(url, settings.webhooks.allow_private),
            ),
        )
        self.submitter = Submitter(self.jobs, store, self, settings.bulk_above)
        self.sweeper = Sweeper(
            store,
            self.blobs,
            self.clock,
            settings.sweeps,
            connected=lambda: set(self.scheduler.sessions),
            nodes_deleted=self.reputations.load,
            held=self.submitter.held,
        )
        self.waits = WaitLimit(self.scheduler, self.clock, settings.wait_limit_seconds)
        self._observe()
        self._sweep_wanted = asyncio.Event()
        self.session_tokens: dict[str, str] = {}  # token -> node id
        self.sinks: set[BufferedSink] = set()  # every connected worker's way down
        self.unflushed: set[BufferedSink] = set()  # those holding messages for the commit
        self.seen: dict[str, float] = {}  # node id -> last_seen not yet written
        self.admission = Admission(self.clock, settings.admission)
        self._watchers: dict[str, set[asyncio.Event]] = defaultdict(set)
        self._inbox: list[tuple[Callable[[], Any], asyncio.Future[Any]]] = []
        self._group_scheduled = False
        self._kick_pending = False
        self.last_group_seconds = 0.0  # how long the last group commit held the loop
        # False while the database is lost: calls are refused, health says NOT_SERVING
        self.serving = True
        self.serving_changed: list[Callable[[bool], None]] = []  # health (server.py)
        # set when another coordinator took the database over while this one was cut off
        # from it: `serve` then stops, and the process exits 1 naming it
        self.taken_over: StoreTaken | None = None
        self.on_taken_over: Callable[[], None] = lambda: None
        self._recovery: asyncio.Task[None] | None = None
        self._lost: Exception = StoreUnavailable("the database is lost")
        self._stopped = False
        self._tasks: list[asyncio.Task[None]] = []

    def _job_ended(self, job: Job) -> None:
        """In the transaction that ends a job: its webhook is owed, and checks of held
        results among its tasks will give no answer (settlement.py)."""
        self.webhooks.job_ended(job)
        self.intake.settlement.job_ended(job.id)

    def _observe(self) -> None:
        """Events from the services that make them, and the metrics counting them."""
        from sparegrid.coordinator.metrics import CoordinatorMetrics  # prometheus_client

        for service in (self.ledger, self.reputations, self.scheduler):
            service.events = self.events
        self.metrics = CoordinatorMetrics(self)
        self.events.listeners.append(self.metrics.event)
        self.intake.on_settled = self.metrics.settled
        self.reputations.on_standing = self._end_session

    def _end_session(self, node_id: str) -> None:
        """A node quarantined, banned, approved or reinstated: its session ends, and the
        worker hears its standing and why in the Welcome of the next one (`worker status`
        shows it)."""
        session = self.scheduler.sessions.get(node_id)
        if session is not None:
            session.sink.close()

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
        self._tasks.append(asyncio.create_task(self._write_seen()))
        self._tasks.append(asyncio.create_task(self._deliver_webhooks()))
        self._tasks.append(asyncio.create_task(self._statistics()))
        self._sweep_wanted.set()  # ended jobs a stop left unswept

    async def submit(self, account: Account, spec: JobSpec) -> Job:
        """Submits a job without holding the event loop long (submit.py); resolves once
        the job is durable."""
        return await self.submitter.submit(account, spec)

    async def stop(self) -> None:
        self._stopped = True
        await self.submitter.stop()
        if self._recovery is not None:
            self._tasks.append(self._recovery)
        await self.metrics.stop()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        try:
            if self.taken_over is None:  # else the database is the other coordinator's
                self.write_seen()
        except Exception:
            log.exception("writing when %d node(s) were last seen failed", len(self.seen))
        self._webhook_calls.shutdown(wait=False, cancel_futures=True)
        self.store.close()

    def call(self, fn: Callable[[], T]) -> "asyncio.Future[T]":
        """Runs `fn` in the next group commit; the future resolves once it is durable.

        Everything queued during one turn of the event loop runs in one transaction, each
        call in a savepoint of its own, followed by a dispatch pass if one was asked for.
        Messages to workers are held back until the commit, so no node hears of a lease,
        and no acknowledgement leaves, before it is on disk.
        """
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        if not self.serving:  # the database is lost: refused at once, retried by callers
            future.set_exception(store_unavailable(self._lost))
            future.exception()  # logged once, by _pause: not again by each unread future
            return future
        self._inbox.append((fn, future))
        self._schedule()
        return future

    def kick(self) -> None:
        """Asks for a dispatch pass in the next group commit."""
        if not self.serving:
            return
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
            self.metrics.group_commit.observe(self.last_group_seconds)

    def _run_group(self) -> None:
        self._group_scheduled = False
        items, self._inbox = self._inbox, []
        if self._stopped:  # shutting down: the store is closed, nothing more happens
            for _, future in items:
                if not future.done():
                    future.cancel()
            return
        done: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        self.events.deferred = True  # written once, with the group (services/events.py)
        try:
            with self.store.transaction():
                for fn, future in items:
                    mark = self.events.mark()
                    try:
                        with self.store.transaction():
                            done.append((future, fn(), None))
                    except Exception as exc:
                        self.events.undo(mark)
                        done.append((future, None, exc))
                if self._kick_pending:
                    self._kick_pending = False
                    with self.metrics.dispatch.time():
                        self.scheduler.dispatch()
                self.events.flush()
        except Exception as exc:  # the commit failed: nothing in this group happened
            log.exception("group commit of %d call(s) failed", len(items))
            self.events.deferred = False
            self.events.discard()
            self._failed_commit(exc, [future for _, future in items])
            return
        self.events.deferred = False
        unflushed = list(self.unflushed)  # the sinks hold this set: cleared in place
        self.unflushed.clear()
        for sink in unflushed:  # only the workers this commit has messages for
            sink.flush()
        self.events.published()
        if self.scheduler.sweeps:
            self._sweep_wanted.set()
        for future, value, error in done:
            if future.done():
                continue
            if error is None:
                future.set_result(value)
            else:
                future.set_exception(error)

    def _failed_commit(self, exc: Exception, futures: list["asyncio.Future[Any]"]) -> None:
        """Memory is ahead of what is durable: it is reloaded from the store, workers
        reconnect and grant their credit afresh, and every call of the group fails. A lost
        database (or a reload that fails) pauses the coordinator until it is back."""
        lost = isinstance(exc, StoreUnavailable)
        if not lost:
            try:
                self._reload()
            except Exception as again:  # the store fails its reads too
                log.exception("reloading from the store after a failed commit failed")
                lost, exc = True, again
        for sink in list(self.sinks):
            sink.discard()
            sink.close()
        self.unflushed.clear()
        if lost:
            self._pause(exc)
            failure = store_unavailable(exc)
        else:
            failure = CoordinatorError(
                ErrorKind.ABORTED, "STORE_UNAVAILABLE", f"the coordinator's store failed: {exc}"
            )
        for future in futures:
            if not future.done():
                future.set_exception(failure)
                future.exception()  # logged above: not again by each unread future

    def _reload(self) -> None:
        """Reloads what the services keep in memory from the store. A job a large retry is
        queuing again still looks ended in the store, with queued tasks: it is not to be
        swept, or the tasks the retry queued would be cancelled under it (the retry
        publishes them or sweeps them back itself)."""
        self.reputations.load()
        self.identities.load()
        self.scheduler.resync()
        for job_id in self.submitter.retrying():
            self.scheduler.sweeps.pop(job_id, None)
        self.canaries.load()

    def _pause(self, exc: Exception) -> None:
        """The database is lost: nothing more runs until `_recover` reconnects. Work held
        by workers stays with them (unacknowledged results in their outboxes, leases that
        they resume when they reconnect)."""
        self._lost = exc
        if not self.serving:
            return
        self.serving = False
        log.error(
            "lost the database: %s; calls are refused (UNAVAILABLE) and health says "
            "NOT_SERVING until it is back",
            exc,
        )
        self.scheduler.sessions.clear()  # their streams were closed: workers reconnect
        self._kick_pending = False
        for listener in self.serving_changed:
            listener(False)
        self._recovery = asyncio.get_running_loop().create_task(self._recover())

    async def _recover(self) -> None:
        """Reconnects with backoff, reloads, and serves again."""
        delay = 0.25
        while True:
            await asyncio.sleep(delay)
            try:
                self.store.reconnect()
                self._reload()
            except StoreTaken as exc:
                log.error("%s: it took over while this one was cut off; stopping", exc)
                self.taken_over = exc
                self.on_taken_over()
                return
            except Exception as exc:
                self._lost = exc
                log.warning("the database is still unavailable (%s); next try in %.1fs", exc, delay)
                delay = min(delay * 2, 5.0)
                continue
            break
        self.serving = True
        self._recovery = None
        log.warning("the database is back: serving again")
        for listener in self.serving_changed:
            listener(True)
        self.kick()

    async def _reaper(self) -> None:
        interval = self.settings.reap_interval_seconds
        last, skipped = self.clock.now(), False
        while True:
            await asyncio.sleep(interval)
            # A pass this late means the process was stopped (a paused VM, SIGSTOP, a swap
            # storm), and the heartbeats that renewed its leases meanwhile wait unread in
            # its sockets: expiring first held its own stall against healthy nodes (their
            # windows halved, kept off their jobs). One pass is left out to read them.
            now = self.clock.now()
            stalled, last = now - last > interval + STALL_SECONDS and not skipped, now
            skipped = stalled
            if not self.serving or stalled:
                continue
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
                log.exception("delivering webhooks failed; the next round tries again")

    async def _deliver(self, delivery: Delivery) -> None:
        secret = account_secret(self.signer, delivery.account_id)
        loop = asyncio.get_running_loop()
        # not the default executor: uploads, estimates and pages must not wait for receivers
        error = await loop.run_in_executor(
            self._webhook_calls, post, delivery, secret, self.settings.webhooks
        )
        if error:
            log.warning(
                "webhook for job %s (try %d) failed: %s",
                delivery.job_id,
                delivery.attempts + 1,
                error,
            )
        await self.call(lambda: self.webhooks.outcome(delivery, error))

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
                log.exception("writing when nodes were last seen failed; kept for the next try")

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
