"""Operations benchmark: what metrics, events and the dashboard cost the coordinator.

In process, on SQLite in a temporary directory, with the default settings:
- a scrape of /metrics (the registry rendered, the scheduler's state read) with N
  connected sessions and J active jobs: the time it holds the event loop;
- recording an event: written at once, or with the rest of its group commit (as the
  coordinator does), then logged as a JSON line;
- the dashboard's operator page with N nodes and J jobs, rendered through its ASGI app.

Prints a table and saves it under bench/results/ (json + txt): medians of --rounds, in
CPU time of this process (the event loop's cost, whatever else the machine runs).

    python bench/operations.py [--sessions 1000] [--jobs 100] [--rounds 5]
"""

import argparse
import asyncio
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from prometheus_client import generate_latest

from sparegrid.coordinator.app import App
from sparegrid.coordinator.domain import Attempt, Device, Node, Task
from sparegrid.coordinator.services.events import EventKind
from sparegrid.coordinator.services.jobs import JobSpec
from sparegrid.coordinator.settings import Settings
from sparegrid.coordinator.store.sqlite import SqliteStore
from sparegrid.coordinator.web import views
from sparegrid.coordinator.web.dashboard import Dashboard

RESULTS = Path(__file__).parent / "results"


class Sink:
    def assign(self, items: list[tuple[Attempt, Task, str]]) -> None:
        pass

    def cancel(self, attempt_ids: list[str], reason: str) -> None:
        pass

    def credited(self, total: int) -> None:
        pass

    def close(self) -> None:
        pass


def grid(root: Path, sessions: int, jobs: int) -> tuple[App, str]:
    app = App(SqliteStore(root / "c.db"), Settings(data_dir=root))
    app.start_services()
    _, admin_key = app.accounts.create("root", 0, is_admin=True)
    client, _ = app.accounts.create("alice", 10**12)
    for i in range(sessions):
        node = Node(f"{i:016x}", bytes(32), f"node{i}", [Device(0, "cpu", "cpu")], owner="")
        app.store.upsert_node(node)
        app.scheduler.connect(node, Sink(), [])
    params = json.dumps({"tasks": 100, "data": "x"}).encode()
    for _ in range(jobs):
        app.jobs.submit(client, JobSpec(kind="echo", params=params, name="bench"))
    return app, admin_key


def timed(fn: Any, repeat: int = 1) -> float:
    """CPU seconds per call (the machine is shared: wall time would measure the others)."""
    began = time.process_time()
    for _ in range(repeat):
        fn()
    return (time.process_time() - began) / repeat


async def page_ms(app: App, admin_key: str, rounds: int) -> list[float]:
    dashboard = Dashboard(app)
    transport = httpx.ASGITransport(app=dashboard.asgi)
    times = []
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
        assert (await http.post("/login", data={"api_key": admin_key})).status_code == 303
        for _ in range(rounds):
            began = time.process_time()
            response = await http.get("/operator")
            times.append((time.process_time() - began) * 1000)
            assert response.status_code == 200
    return times


def emit_us(app: App, count: int, grouped: bool) -> float:
    """Per event: written at once, or (`grouped`) together as a group commit writes them."""

    def emit() -> None:
        app.events.deferred = grouped
        with app.store.transaction():
            for i in range(count):
                app.events.emit(EventKind.TASK_FAILED, f"task {i} failed", job_id="j", index=i)
            app.events.flush()
        app.events.deferred = False
        app.events.published()

    return timed(emit) / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    rows: list[tuple[str, float, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        app, admin_key = grid(Path(tmp), args.sessions, args.jobs)
        registry = app.metrics.registry
        scrape = [timed(lambda: generate_latest(registry)) * 1000 for _ in range(args.rounds)]
        size = len(generate_latest(registry))
        alone, grouped = [], []
        for _ in range(args.rounds):  # interleaved
            alone.append(emit_us(app, 2000, grouped=False))
            grouped.append(emit_us(app, 2000, grouped=True))
        pages = asyncio.run(page_ms(app, admin_key, args.rounds))
        gather = [timed(lambda: views.operator(app)) * 1000 for _ in range(args.rounds)]
        rows = [
            (
                f"scrape /metrics ({args.sessions} sessions, {args.jobs} jobs)",
                statistics.median(scrape),
                "ms",
            ),
            ("scrape size", size / 1024, "KiB"),
            ("record one event, written at once (SQLite)", statistics.median(alone), "us"),
            (
                "record one event, written with its group commit (SQLite)",
                statistics.median(grouped),
                "us",
            ),
            (
                f"operator page ({args.sessions} nodes, {args.jobs} jobs), all of it",
                statistics.median(pages),
                "ms",
            ),
            (
                "  of which on the event loop (reading; rendering is in a thread)",
                statistics.median(gather),
                "ms",
            ),
        ]
        app.store.close()
    lines = [f"{'what':<62} {'median':>10}", "-" * 75]
    lines += [f"{what:<62} {value:>10.2f} {unit}" for what, value, unit in rows]
    text = "\n".join(lines)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    name = f"operations-{time.strftime('%Y%m%d-%H%M%S')}"
    meta = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "clock": "process CPU time",
        **vars(args),
    }
    (RESULTS / f"{name}.txt").write_text(text + "\n" + json.dumps(meta) + "\n")
    (RESULTS / f"{name}.json").write_text(
        json.dumps(
            {"meta": meta, "rows": [{"what": w, "median": v, "unit": u} for w, v, u in rows]},
            indent=2,
        )
    )
    print(f"saved bench/results/{name}.txt and .json")


if __name__ == "__main__":
    main()
