"""Wires the store and the services together and runs the coordinator's background work."""

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from sparegrid.coordinator.background import Background
from sparegrid.coordinator.blobs_s3 import open_blobs
from sparegrid.coordinator.clock import Clock, SystemClock
from sparegrid.coordinator.domain import Account, Job
from sparegrid.coordinator.groupcommit import BufferedSink, WallSteps
from sparegrid.coordinator.kinds import BUILTIN_KINDS
from sparegrid.coordinator.services.accounts import Accounts
from sparegrid.coordinator.services.admission import Admission
from sparegrid.coordinator.services.calls import CallLimiter
from sparegrid.coordinator.services.canaries import CANARY_ACCOUNT, Canaries
from sparegrid.coordinator.services.comparators import Comparators
from sparegrid.coordinator.services.events import Events
from sparegrid.coordinator.services.identity import Identities
from sparegrid.coordinator.services.invites import Invites
from sparegrid.coordinator.services.jobs import Jobs, JobsConfig, JobSpec
from sparegrid.coordinator.services.ledger import Ledger
from sparegrid.coordinator.services.quotas import Quotas, Renewals
from sparegrid.coordinator.services.reputation import Reputations
from sparegrid.coordinator.services.results import Intake
from sparegrid.coordinator.services.retries import Retries
from sparegrid.coordinator.services.scheduler import Scheduler, SchedulerConfig
from sparegrid.coordinator.services.settlement import Settlement
from sparegrid.coordinator.services.spotcheck import SpotChecks
from sparegrid.coordinator.services.sweeper import Sweeper
from sparegrid.coordinator.services.verification import Verifier
from sparegrid.coordinator.services.vouching import Vouching
from sparegrid.coordinator.services.waits import WaitLimit
from sparegrid.coordinator.services.webhooks import CALL_THREADS, Webhooks, check_url
from sparegrid.coordinator.settings import Settings
from sparegrid.coordinator.store.base import Store, StoreTaken, StoreUnavailable
from sparegrid.coordinator.submit import Submitter
from sparegrid.wire import Signer

if TYPE_CHECKING:
    from sparegrid.coordinator.metrics import CoordinatorMetrics

log = logging.getLogger("sparegrid.coordinator")


class App(Background):
    """Everything the servicers need; all of it runs on the event loop's thread. Its group
    commit is in groupcommit.py, its background loops in background.py."""

    metrics: "CoordinatorMetrics"

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
        self.intake.missing_inputs.call = self.call  # a bucket is looked in off the loop
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
        self.retries = Retries(self.jobs, store, self.ledger, self.scheduler, self.blobs)
        self.submitter = Submitter(self.jobs, self.retries, store, self, settings.bulk_above)
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
        # False while the database is lost: calls are refused, health says NOT_SERVING
        self.serving = True
        self._observe()
        self._sweep_wanted = asyncio.Event()
        self.session_tokens: dict[str, str] = {}  # token -> node id
        self.sinks: set[BufferedSink] = set()  # every connected worker's way down
        self.unflushed: set[BufferedSink] = set()  # those holding messages for the commit
        self.seen: dict[str, float] = {}  # node id -> last_seen not yet written
        self.admission = Admission(self.clock, settings.admission)
        self.calls = CallLimiter(self.clock, settings.calls)  # each account's client calls
        self.renewals = Renewals(self.clock, settings.sweeps.blob_retention)
        self._watchers: dict[str, set[asyncio.Event]] = defaultdict(set)
        self._inbox: list[tuple[Callable[[], Any], asyncio.Future[Any]]] = []
        self._group_scheduled = False
        self._kick_pending = False
        self._committer = ThreadPoolExecutor(1, thread_name_prefix="commit")
        self.wall_steps = WallSteps(self.clock)
        self._commit: asyncio.Future[None] | None = None
        self.last_group_seconds = 0.0  # how long the last group commit held the loop
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

    def abandon(self) -> None:
        """Undoes a start() cut short before the event loop ran again (a standby cut off
        from the database while taking over): the background work it created is cancelled
        before its first step, so no leftover app of an attempt writes, reconnects or takes
        the database from the one that serves; the caller closes the store."""
        for task in self._tasks:
            task.cancel()
        self._webhook_calls.shutdown(wait=False, cancel_futures=True)
        self._committer.shutdown(wait=False)

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
        await self.wait_committed()
        self._committer.shutdown()
        self.store.close()

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
