"""Slow-link benchmark: tiny tasks over a home connection's round trip vs loopback.

A latency-injecting TCP proxy sits between the workers and the coordinator and holds
every chunk `--delay-ms` in each direction (default 150 ms: a 300 ms round trip), keeping
each stream's order. In one run, interleaved over `--rounds` rounds, it measures 2 workers
with **default settings** (no --prefetch) running an echo job of `--tasks` tiny tasks
through the link and on loopback, and (unless --no-peers) Ray on the same no-op tasks.

    python bench/slowlink.py [--tasks 1000] [--delay-ms 150] [--rounds 3]
        [--baseline ../other/.venv/bin/python] [--no-slow] [--pinned 0] [--no-peers]

Prints a table (medians) and saves it under bench/results/ (json + txt).
"""

import argparse
import asyncio
import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from dispatch import peer, spawn, start_cluster, stop, wait_online

from sparegrid.sdk import AdminClient, Client

RESULTS = Path(__file__).parent / "results"


class SlowLink:
    """A TCP proxy on 127.0.0.1 that delays every chunk by `delay` seconds each way, in a
    thread of its own (so the benchmark's clients never share its event loop)."""

    def __init__(self, target: str, delay: float) -> None:
        host, port = target.rsplit(":", 1)
        self.target = (host, int(port))
        self.delay = delay
        self.address = ""
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "SlowLink":
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        async def close() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._accept, "127.0.0.1", 0))
        port = server.sockets[0].getsockname()[1]
        self.address = f"127.0.0.1:{port}"
        self._ready.set()
        self._loop.run_forever()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        with contextlib.suppress(asyncio.CancelledError):  # the proxy closing at the end
            await asyncio.gather(
                self._pipe(reader, up_writer),
                self._pipe(up_reader, writer),
                return_exceptions=True,
            )

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Copies one direction; each chunk leaves `delay` after it arrived, in order."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        loop = asyncio.get_running_loop()

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                if not data:
                    break
                await asyncio.sleep(max(due - loop.time(), 0))
                writer.write(data)
                await writer.drain()
            with contextlib.suppress(OSError):
                writer.close()

        sender = asyncio.create_task(deliver())
        try:
            while data := await reader.read(1 << 16):
                queue.put_nowait((loop.time() + self.delay, data))
        finally:
            queue.put_nowait((loop.time() + self.delay, b""))
            await sender


def run_tasks(address: str, admin_address: str, root: Path, tasks: int) -> float:
    """An echo job of `tasks` no-op tasks on the cluster; tasks per second."""
    admin = AdminClient(admin_address, api_key=(root / "coord/admin.key").read_text().strip())
    _, key = admin.create_account("bench", credit=10**12)
    with Client(admin_address, api_key=key) as client:
        wait_online(admin, 2)
        client.echo("", tasks=50).wait(timeout=300)  # warm up: sessions open, windows grow
        start = time.perf_counter()
        job = client.echo("", tasks=tasks).wait(timeout=600)
        elapsed = time.perf_counter() - start
        if job.state != "succeeded":
            raise RuntimeError(f"job ended {job.state}")
        if not admin.ledger_check().balanced:
            raise RuntimeError("the ledger does not balance")
    admin.close()
    return tasks / elapsed


def one_round(
    tasks: int, delay: float | None, prefetch: int | None = None, python: str = sys.executable
) -> float:
    """2 workers (default settings unless `prefetch` pins the window), through a slow link
    if `delay` is given, everything run by `python`; tasks per second."""
    with tempfile.TemporaryDirectory(prefix="sparegrid-slowlink-") as tmp:
        root = Path(tmp)
        address, procs = start_cluster(root, workers=0, prefetch=None, sync="FULL", python=python)
        try:
            with contextlib.ExitStack() as stack:
                target = address
                if delay is not None:
                    target = stack.enter_context(SlowLink(address, delay)).address
                admin = AdminClient(address, api_key=(root / "coord/admin.key").read_text().strip())
                for i in range(2):
                    _, owner_key = admin.create_account(f"volunteer{i}", credit=0)
                    procs.append(
                        spawn(
                            root,
                            f"worker{i}",
                            "worker",
                            "run",
                            "--coordinator",
                            target,
                            "--data-dir",
                            str(root / f"node{i}"),
                            "--name",
                            f"bench{i}",
                            "--devices",
                            "cpu",
                            *(("--prefetch", str(prefetch)) if prefetch else ()),
                            env={"SPAREGRID_OWNER_KEY": owner_key},
                            python=python,
                        )
                    )
                admin.close()
                return run_tasks(target, address, root, tasks)
        finally:
            stop(procs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--delay-ms", type=float, default=150.0, help="each way [%(default)s]")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-peers", action="store_true")
    parser.add_argument(
        "--pinned", type=int, default=256, help="also loopback with --prefetch N (0: skip)"
    )
    parser.add_argument("--no-slow", action="store_true", help="loopback only (no proxy)")
    parser.add_argument(
        "--baseline",
        metavar="PYTHON",
        help="also loopback with this interpreter (another checkout's), in the same rounds",
    )
    args = parser.parse_args()
    runs: dict[str, list[float]] = {
        "loopback": [],
        "baseline": [],
        "slow link": [],
        "pinned": [],
        "ray": [],
    }
    for n in range(args.rounds):
        if args.baseline:  # which goes first alternates
            pair = [("loopback", sys.executable), ("baseline", args.baseline)]
            for name, python in pair if n % 2 == 0 else pair[::-1]:
                runs[name].append(one_round(args.tasks, None, python=python))
        else:
            runs["loopback"].append(one_round(args.tasks, None))
        if not args.no_slow:
            runs["slow link"].append(one_round(args.tasks, args.delay_ms / 1000))
        if args.pinned:
            runs["pinned"].append(one_round(args.tasks, None, args.pinned))
        if not args.no_peers:
            rate = peer("ray", args.tasks)
            if rate:
                runs["ray"].append(rate)
    report(runs, args)
    return 0


def report(runs: dict[str, list[float]], args: argparse.Namespace) -> None:
    med = {name: statistics.median(v) for name, v in runs.items() if v}
    rtt = 2 * args.delay_ms
    lines = [
        f"sparegrid slow-link benchmark — {platform.node()}, {os.cpu_count()} cores, "
        f"{time.strftime('%Y-%m-%d %H:%M')}, {args.tasks} tiny tasks, 2 workers with "
        f"default settings, {args.rounds} rounds interleaved, medians"
        + (f"; baseline: {args.baseline}" if args.baseline else ""),
        f"{'measure':<44}{'value':>12}  target",
        f"{'tasks/s on loopback':<44}{med['loopback']:>12,.0f}",
    ]
    if "baseline" in med:
        lines += [
            f"{'tasks/s on loopback, baseline':<44}{med['baseline']:>12,.0f}",
            f"{'  loopback / baseline':<44}{med['loopback'] / med['baseline']:>11.2f}x",
        ]
    if "slow link" in med:
        lines += [
            f"{f'tasks/s over a {rtt:.0f} ms round trip':<44}{med['slow link']:>12,.0f}",
            f"{'  slow link / loopback':<44}{med['slow link'] / med['loopback']:>11.2f}x  >= 0.5x",
        ]
    if "pinned" in med:
        lines += [
            f"{f'tasks/s on loopback, --prefetch {args.pinned}':<44}{med['pinned']:>12,.0f}",
            f"{'  default / pinned':<44}{med['loopback'] / med['pinned']:>11.2f}x",
        ]
    if "ray" in med:
        lines += [
            f"{'ray no-op tasks/s (same run)':<44}{med['ray']:>12,.0f}",
            f"{'  sparegrid loopback / ray':<44}{med['loopback'] / med['ray']:>11.2f}x  >= 3x",
        ]
        if "baseline" in med:
            lines.append(f"{'  baseline loopback / ray':<44}{med['baseline'] / med['ray']:>11.2f}x")
    else:
        lines.append(f"{'ray no-op tasks/s':<44}{'not measured':>12}")
    text = "\n".join(lines)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (RESULTS / f"slowlink-{stamp}.txt").write_text(text + "\n")
    data: dict[str, Any] = {"args": vars(args), "runs": runs, "medians": med}
    (RESULTS / f"slowlink-{stamp}.json").write_text(json.dumps(data, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
