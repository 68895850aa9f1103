"""The coordinator's Prometheus metrics (`coordinator serve --metrics-port`).

Each App gets its own registry. What the scheduler holds in memory (queues, sessions,
leases) is read when scraped, on the event loop's thread; what happens (results,
verdicts, events, credit) is counted as it happens, after its group commit. Labels take
values from closed sets only (job kinds the coordinator knows, enums): never a job id,
node id or a string a node or client sent, so no input can grow the series without bound.
"""

import asyncio
import logging
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from sparegrid.coordinator.domain import Event
from sparegrid.coordinator.errors import CoordinatorError
from sparegrid.coordinator.services.events import EventKind

if TYPE_CHECKING:
    from sparegrid.coordinator.app import App
    from sparegrid.coordinator.services.settlement import Settled

log = logging.getLogger(__name__)

OTHER = "other"  # the label value for anything outside a closed set
LAG_INTERVAL = 0.5  # seconds between event-loop lag probes
BLOB_INTERVAL = 30.0  # seconds between walks of the blob store for its size
# ... of a bucket: each walk lists it, 1,000 keys a request, and requests are billed
REMOTE_BLOB_INTERVAL = 600.0
_FAST = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


def bounded(value: str, allowed: Iterable[str]) -> str:
    """`value` when it is one of `allowed`, else "other"."""
    return value if value in allowed else OTHER


def role_metrics(registry: CollectorRegistry, serving: bool) -> None:
    """What this coordinator is now, the same series whether it serves or stands by, so one
    alert rule covers both (`sum(sparegrid_coordinator_serving) != 1` across the
    coordinators of a database; a standby that is gone is `up == 0`): the gauges, and the
    process' own (CPU, memory, open files, start time; read from /proc when scraped)."""
    Gauge(
        "sparegrid_coordinator_serving",
        "1 when this coordinator serves from its database, 0 while it stands by for another",
        registry=registry,
    ).set(1 if serving else 0)
    role = Gauge(
        "sparegrid_coordinator_role",
        "1 for what this coordinator is now (serving, or standby: another one holds the "
        "database), 0 for the other",
        ["role"],
        registry=registry,
    )
    role.labels("serving").set(1 if serving else 0)
    role.labels("standby").set(0 if serving else 1)
    ProcessCollector(registry=registry)


class CoordinatorMetrics:
    def __init__(self, app: "App") -> None:
        self.app = app
        self.kinds = frozenset(app.jobs.kinds)
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.results = Counter(
            "sparegrid_results",
            "Results taken in, by job kind and verification outcome "
            "(accepted, pending another result, held for a check, failed)",
            ["kind", "outcome"],
            registry=r,
        )
        self.events = Counter(
            "sparegrid_events",
            "Events recorded (sparegrid admin events), by kind",
            ["kind"],
            registry=r,
        )
        self.disputes = Counter(
            "sparegrid_disputes", "Disputes opened or decided, by state", ["state"], registry=r
        )
        self.task_failures = Counter(
            "sparegrid_task_failures",
            "Attempts that failed or ran out; final=true when the task failed with it",
            ["final"],
            registry=r,
        )
        self.credit = Counter(
            "sparegrid_credit",
            "Credit moved, by flow (paid, escrowed, refunded, granted, staked, unstaked, slashed)",
            ["flow"],
            registry=r,
        )
        self.group_commit = Histogram(
            "sparegrid_group_commit_seconds",
            "Time one group commit held the event loop",
            registry=r,
            buckets=_FAST,
        )
        self.dispatch = Histogram(
            "sparegrid_dispatch_seconds",
            "Time one dispatch pass (matching queued tasks to "
            "free worker slots and leasing them) took",
            registry=r,
            buckets=_FAST,
        )
        self.loop_lag = Histogram(
            "sparegrid_event_loop_lag_seconds",
            "How late a timer on the event loop fired",
            registry=r,
            buckets=_FAST,
        )
        self.blob_bytes = Gauge(
            "sparegrid_blob_bytes",
            "Bytes of stored blobs (walked every 30 s; in a bucket every 10 min)",
            registry=r,
        )
        self.blob_files = Gauge(
            "sparegrid_blobs",
            "Stored blobs (walked every 30 s; in a bucket every 10 min)",
            registry=r,
        )
        self.registry.register(_StateCollector(self))
        role_metrics(r, serving=True)
        self._tasks: list[asyncio.Task[None]] = []

    # counted as it happens

    def settled(self, settled: "Settled") -> None:
        for (kind, outcome), count in settled.outcomes.items():
            self.results.labels(bounded(kind, self.kinds), outcome).inc(count)
        paid = sum(settled.paid.values())
        if paid:
            self.credit.labels("paid").inc(paid)

    def event(self, event: Event) -> None:
        self.events.labels(bounded(event.kind, _EVENT_KINDS)).inc()
        data = event.data
        if event.kind == EventKind.DISPUTE:
            self.disputes.labels(bounded(str(data.get("state")), _DISPUTE_STATES)).inc()
        elif event.kind == EventKind.TASK_FAILED:
            self.task_failures.labels("true" if data.get("final") else "false").inc()
        elif event.kind == EventKind.LEDGER:
            amount = data.get("amount")
            if isinstance(amount, int) and amount > 0:
                self.credit.labels(bounded(str(data.get("flow")), _FLOWS)).inc(amount)

    # background probes, while metrics are served

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._lag()), asyncio.create_task(self._blobs())]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _lag(self) -> None:
        while True:
            began = time.perf_counter()
            await asyncio.sleep(LAG_INTERVAL)
            self.loop_lag.observe(max(time.perf_counter() - began - LAG_INTERVAL, 0.0))

    async def _blobs(self) -> None:
        blobs = self.app.blobs
        while True:
            try:
                stored = await asyncio.to_thread(blobs.stored)
            except CoordinatorError as exc:  # a bucket that did not answer: next time
                log.warning("the blob metrics were not updated: %s", exc)
            else:
                self.blob_files.set(len(stored))
                self.blob_bytes.set(sum(size for _, size, _ in stored))
            await asyncio.sleep(REMOTE_BLOB_INTERVAL if blobs.remote else BLOB_INTERVAL)


_EVENT_KINDS = frozenset(k.value for k in EventKind)
_DISPUTE_STATES = frozenset({"open", "settled", "failed"})
_FLOWS = frozenset({"escrowed", "refunded", "granted", "staked", "unstaked", "slashed", "debited"})


class _StateCollector(Collector):
    """What the scheduler holds now, read at scrape time."""

    def __init__(self, metrics: CoordinatorMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        app, kinds = self.metrics.app, self.metrics.kinds
        sched = app.scheduler
        now: float = app.clock.now()
        depth = GaugeMetricFamily(
            "sparegrid_queue_tasks", "Tasks waiting to be leased, by job kind", labels=["kind"]
        )
        age = GaugeMetricFamily(
            "sparegrid_queue_oldest_seconds",
            "Age of the oldest job with tasks waiting, by job kind",
            labels=["kind"],
        )
        running = GaugeMetricFamily(
            "sparegrid_tasks_running", "Tasks leased to a node now, by job kind", labels=["kind"]
        )
        jobs = GaugeMetricFamily("sparegrid_jobs_active", "Jobs not finished", labels=["kind"])
        by_kind: dict[str, list[float]] = {k: [0.0, 0.0, 0.0, 0.0] for k in sorted(kinds)}
        for active in sched.jobs.values():
            row = by_kind.setdefault(bounded(active.job.kind, kinds), [0.0, 0.0, 0.0, 0.0])
            queued = len(active.queue) + len(active.held)
            row[0] += queued
            row[2] += len(active.running)
            row[3] += 1
            if queued:
                row[1] = max(row[1], now - float(active.job.created_at))
        for kind, (waiting, oldest, leased, count) in by_kind.items():
            depth.add_metric([kind], waiting)
            age.add_metric([kind], oldest)
            running.add_metric([kind], leased)
            jobs.add_metric([kind], count)
        yield from (depth, age, running, jobs)
        sessions = GaugeMetricFamily(
            "sparegrid_sessions", "Connected worker sessions", labels=["state"]
        )
        draining = sum(1 for s in sched.sessions.values() if s.draining)
        sessions.add_metric(["active"], len(sched.sessions) - draining)
        sessions.add_metric(["draining"], draining)
        yield sessions
        yield GaugeMetricFamily(
            "sparegrid_database_up",
            "1 while the coordinator reaches its database, 0 while it is lost (calls are "
            "refused, health says NOT_SERVING, until it is back)",
            value=1 if app.serving else 0,
        )
        yield CounterMetricFamily(
            "sparegrid_tasks_leased", "Tasks leased to nodes", value=sched.leased_total
        )
        yield CounterMetricFamily(
            "sparegrid_lease_expiries",
            "Leases taken back: run out, or a straggler's",
            value=sched.expired_total,
        )
