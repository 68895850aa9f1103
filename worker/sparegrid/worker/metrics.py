"""The worker's Prometheus metrics (`worker run --metrics-port`, off by default).

`metrics_http` serves them from a thread of its own, to a Host header no other site can
rebind (an IP address, localhost, --metrics-addr, --metrics-host). That thread never touches the
daemon: once a second the event loop puts a fresh status snapshot (what `worker status`
shows) where the collector reads it, and task outcomes are counted as they are reported
(prometheus_client's counters are thread-safe). Label values come from closed sets only:
this node's device indexes, the policy's states, the executors it has.
"""

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from sparegrid.worker.executors.registry import ExecutorRegistry
from sparegrid.worker.metrics_http import MetricsServer
from sparegrid.worker.node.snapshot import StatusView, status_snapshot
from sparegrid.worker.policy.rules import Mode
from sparegrid.worker.slots.child.protocol import Outcome


class MetricsView(StatusView, Protocol):
    """What the metrics read from the running daemon: its status, and its executors."""

    @property
    def executors(self) -> ExecutorRegistry: ...


_log = logging.getLogger("sparegrid.worker.metrics")
REFRESH_SECONDS = 1.0
OTHER = "other"
STATES = frozenset({"unknown", "working", *(m.value for m in Mode)})
PREEMPTIONS = frozenset({"PREEMPTED", "OVER_VRAM_SHARE"})
_TASK_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600)


def _cache_bytes(root: Path) -> int:
    """Bytes of the files under `root` (downloads in progress included)."""
    total = 0
    for folder, _, files in os.walk(root):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(folder, name)).st_size
    return total


class WorkerMetrics:
    def __init__(self, worker: "MetricsView") -> None:
        self.worker = worker
        self.kinds = frozenset(spec.name for spec in worker.executors.specs())
        self.registry = CollectorRegistry(auto_describe=True)
        self.task_seconds = Histogram(
            "sparegrid_worker_task_seconds",
            "Time tasks took on this node, by job kind and outcome (ok, failed, preempted)",
            ["kind", "outcome"],
            registry=self.registry,
            buckets=_TASK_BUCKETS,
        )
        self.preemptions = Counter(
            "sparegrid_worker_preemptions",
            "Tasks this node's policy stopped (owner back, too hot, over its memory share)",
            ["device"],
            registry=self.registry,
        )
        self._timers: dict[tuple[str, str], Histogram] = {}
        self.snapshot: dict[str, Any] = {}
        self.cache_bytes = 0
        self.port = 0
        self._lock = threading.Lock()
        self._server: MetricsServer | None = None
        self._refresh: asyncio.Task[None] | None = None
        self.registry.register(_SnapshotCollector(self))

    def report(self, kind: str, device: int | None, outcome: Outcome) -> None:
        """A task ended (or was stopped) on `device`."""
        preempted = outcome.code in PREEMPTIONS
        label = "ok" if outcome.ok else "preempted" if preempted else "failed"
        kind = kind if kind in self.kinds else OTHER
        if outcome.duration_us:
            timer = self._timers.get((kind, label))
            if timer is None:  # labels() is slow enough to matter at thousands of tasks/s
                timer = self._timers[kind, label] = self.task_seconds.labels(kind, label)
            timer.observe(outcome.duration_us / 1e6)
        if preempted:
            self.preemptions.labels(self._device(device)).inc()

    def _device(self, device: int | None) -> str:
        known = {d.index for d in self.worker.devices}
        return str(device) if device in known else OTHER

    async def start(self, addr: str, port: int, hosts: Iterable[str] = ()) -> None:
        """Serves /metrics to IP addresses, localhost, `addr` and the names in `hosts`;
        the bound port goes to DATA_DIR/metrics.addr."""
        self._take_snapshot()
        try:
            self._server = MetricsServer(self.registry, addr, port, hosts)
        except OSError as exc:
            raise OSError(
                f"cannot serve metrics on {addr}:{port}: {exc.strerror or exc}; "
                "pick another --metrics-port"
            ) from None
        self.port = self._server.port
        data_dir = self.worker.config.data_dir
        (data_dir / "metrics.addr").write_text(f"{addr}:{self.port}\n")
        self._refresh = asyncio.create_task(self._refreshing())
        _log.info("metrics on http://%s:%d/metrics", addr, self.port)

    async def close(self) -> None:
        if self._refresh is not None:
            self._refresh.cancel()
            await asyncio.gather(self._refresh, return_exceptions=True)
        if self._server is not None:
            await asyncio.to_thread(self._server.close)

    async def _refreshing(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_SECONDS)
            cache = await asyncio.to_thread(_cache_bytes, self.worker.config.data_dir / "cache")
            self._take_snapshot(cache)

    def _take_snapshot(self, cache: int | None = None) -> None:
        snapshot = status_snapshot(self.worker)
        with self._lock:
            self.snapshot = snapshot
            if cache is not None:
                self.cache_bytes = cache


class _SnapshotCollector(Collector):
    """What the last snapshot says: devices, the session, credit, the cache."""

    def __init__(self, metrics: WorkerMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        with self.metrics._lock:
            snapshot, cache = self.metrics.snapshot, self.metrics.cache_bytes
        state = GaugeMetricFamily(
            "sparegrid_worker_device_state",
            "1 for each device's state now (working, idle-waiting, paused: ..., disabled)",
            labels=["device", "state"],
        )
        running = GaugeMetricFamily(
            "sparegrid_worker_device_tasks", "Tasks held by each device", labels=["device"]
        )
        for device in snapshot.get("devices", []):
            index = str(device["index"])
            shown = device["state"] if device["state"] in STATES else OTHER
            for name in sorted(STATES | {shown}):
                state.add_metric([index, name], 1.0 if name == shown else 0.0)
            running.add_metric([index], len(device["tasks"]))
        yield state
        yield running
        yield GaugeMetricFamily(
            "sparegrid_worker_connected",
            "1 while a session with the coordinator is open",
            value=1.0 if snapshot.get("connected") else 0.0,
        )
        credit = snapshot.get("credit", {})
        yield CounterMetricFamily(
            "sparegrid_worker_credit_earned",
            "This node's credit in the coordinator's ledger, as last heard from it",
            value=float(credit.get("total", 0)),
        )
        yield CounterMetricFamily(
            "sparegrid_worker_results_accepted",
            "Results the coordinator accepted from this node (paid at once or once validated)",
            value=float(credit.get("accepted", 0)),
        )
        yield GaugeMetricFamily(
            "sparegrid_worker_cache_bytes", "Bytes in the input cache", value=float(cache)
        )
