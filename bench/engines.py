"""Engines benchmark: tiny-task throughput on SQLite and on PostgreSQL, in one run.

Each round starts, for each engine in turn (the order alternates between rounds), a real
coordinator on a fresh database and two real worker processes with the worker's DEFAULT
settings, runs a warm-up job, then an echo job of N no-op tasks: submit -> every result
verified, paid, done. It records tasks/s and the CPU time (user + system, from /proc) per
verified result of the coordinator, of the two worker processes and of their executor
children (all of each kind together, so per task wherever it ran), and on PostgreSQL the CPU time of the server processes
serving the coordinator when the server runs on this machine (SQLite's runs inside the
coordinator and is counted there), checks the ledger balances, and stops everything.

With --db-delay-ms, a third engine, `postgres-far`, reaches the same server through a
latency-injecting TCP proxy (bench/slowlink.py's, the delay each way): a database on
another machine, where every round trip the coordinator waits for costs the link's time.
The round trip measured through the proxy is printed with the table.

PostgreSQL gets a database of its own per round (`sparegrid_bench_<hex>`, dropped after),
so nothing else on the server is touched. Medians over the rounds are printed and saved
under bench/results/.

    SPAREGRID_TEST_POSTGRES=postgresql://postgres@127.0.0.1:5432/test \\
        python bench/engines.py [--tasks 2000] [--rounds 3] [--tag main]
            [--baseline ../main/.venv/bin/python] [--db-delay-ms 0.5]
"""

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from dispatch import stop
from slowlink import SlowLink

from sparegrid.sdk import AdminClient, Client

RESULTS = Path(__file__).parent / "results"
ENGINES = ("sqlite", "postgres")


@contextmanager
def postgres_database(dsn: str) -> Iterator[str]:
    """A fresh database on the server `dsn` names; yields its DSN, drops it after."""
    import psycopg
    from psycopg import sql

    name = f"sparegrid_bench_{uuid.uuid4().hex[:10]}"
    for attempt in range(20):  # CREATE DATABASE fails while another session uses template1
        try:
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            break
        except psycopg.errors.ObjectInUse:
            if attempt == 19:
                raise
            time.sleep(0.5)
    parts = urlsplit(dsn)
    try:
        yield urlunsplit(parts._replace(path="/" + name))
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def server_pids(database: str) -> list[int]:
    """The PostgreSQL server processes serving the coordinator's connections to `database`
    (its DSN), when the server runs on this machine; [] for SQLite."""
    if not database.startswith("postgresql"):
        return []
    import psycopg

    name = urlsplit(database).path.lstrip("/")
    with psycopg.connect(database, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s"
            " AND application_name = 'sparegrid-coordinator'",
            (name,),
        ).fetchall()
    return [pid for (pid,) in rows if Path(f"/proc/{pid}/stat").exists()]


def cpu_of(pids: list[int]) -> dict[int, float]:
    """CPU seconds of each process still running."""
    found = {}
    for pid in pids:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            found[pid] = cpu_seconds(pid)
    return found


def children_of(pids: list[int]) -> list[int]:
    """The processes whose parent is one of `pids` (a worker's executor children)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                fields = (entry / "stat").read_text().rpartition(")")[2].split()
                if int(fields[1]) in pids:
                    found.append(int(entry.name))
    return found


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def spawn(root: Path, python: str, name: str, *args: str, env: dict[str, str] | None = None) -> Any:
    log = (root / f"{name}.log").open("ab")
    return subprocess.Popen(
        [python, "-m", "sparegrid.cli.main", *args],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, **(env or {})},
    )


def start(root: Path, python: str, database: str, workers: int) -> tuple[str, list[Any]]:
    """A coordinator on `database` and `workers` workers with default settings, run by
    `python` (another checkout's, for a baseline)."""
    data = root / "coord"
    flags = ["--listen", "127.0.0.1:0", "--data-dir", str(data), "--log-level", "WARNING"]
    procs = [
        spawn(root, python, "coordinator", "coordinator", "serve", *flags, "--database", database)
    ]
    addr = data / "coordinator.addr"
    deadline = time.monotonic() + 60
    while not (addr.exists() and addr.read_text().endswith("\n")):  # written, not begun
        if time.monotonic() > deadline or procs[0].poll() is not None:
            stop(procs)
            raise RuntimeError("coordinator did not start; see " + str(root / "coordinator.log"))
        time.sleep(0.05)
    address = addr.read_text().strip()
    admin = AdminClient(address, api_key=(data / "admin.key").read_text().strip())
    for i in range(workers):
        _, owner_key = admin.create_account(f"volunteer{i}", credit=0)
        flags = ["--coordinator", address, "--data-dir", str(root / f"node{i}"), "--devices", "cpu"]
        env = {"SPAREGRID_OWNER_KEY": owner_key}
        procs.append(
            spawn(
                root, python, f"worker{i}", "worker", "run", *flags, "--name", f"bench{i}", env=env
            )
        )
    admin.close()
    return address, procs


def wait_online(admin: AdminClient, count: int) -> None:
    """Workers start slowly on a loaded machine (imports): up to 3 minutes."""
    deadline = time.monotonic() + 180
    while sum(1 for n in admin.nodes() if n.state == "online") < count:
        if time.monotonic() > deadline:
            raise RuntimeError("workers did not come online")
        time.sleep(0.1)


def one_round(
    engine: str, python: str, dsn: str, tasks: int, delay: float = 0.0
) -> dict[str, float]:
    with (
        tempfile.TemporaryDirectory(prefix="sparegrid-engines-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        root = Path(tmp)
        with (
            postgres_database(dsn)
            if engine.startswith("postgres")
            else _fixed(f"sqlite:///{root / 'coord' / 'coordinator.db'}")
        ) as database:
            served = database
            if engine == "postgres-far":
                served = stack.enter_context(far(database, delay))
            address, procs = start(root, python, served, workers=2)
            try:
                admin = AdminClient(address, api_key=(root / "coord/admin.key").read_text().strip())
                _, key = admin.create_account("bench", credit=10**12)
                client = Client(address, api_key=key)
                wait_online(admin, 2)
                client.echo("", tasks=100).wait(timeout=300)  # warm up
                server = server_pids(database)  # the database's own CPU, on this machine
                workers = [p.pid for p in procs[1:]]
                kinds = {"worker": workers, "child": children_of(workers), "server": server}
                cpu0, t0 = cpu_seconds(procs[0].pid), time.perf_counter()
                before = {kind: cpu_of(pids) for kind, pids in kinds.items()}
                job = client.echo("", tasks=tasks).wait(timeout=1200)
                elapsed, cpu = time.perf_counter() - t0, cpu_seconds(procs[0].pid) - cpu0
                after = {kind: cpu_of(pids) for kind, pids in kinds.items()}
                spent = {
                    kind: sum(
                        after[kind][pid] - before[kind][pid]
                        for pid in after[kind].keys() & before[kind]
                    )
                    for kind in kinds
                }
                if job.state != "succeeded":
                    raise RuntimeError(f"{engine}: the job ended {job.state}")
                if not admin.ledger_check().balanced:
                    raise RuntimeError(f"{engine}: the ledger does not balance")
                client.close()
                admin.close()
            finally:
                stop(procs)
    return {
        "tasks_per_s": tasks / elapsed,
        "cpu_ms_per_result": cpu * 1000 / tasks,
        "worker_cpu_ms_per_result": spent["worker"] * 1000 / tasks,
        "child_cpu_ms_per_result": spent["child"] * 1000 / tasks,
        "db_server_cpu_ms_per_result": spent["server"] * 1000 / tasks,
    }


@contextmanager
def _fixed(value: str) -> Iterator[str]:
    yield value


@contextmanager
def far(database: str, delay: float) -> Iterator[str]:
    """`database` (a DSN) reached through a proxy delaying every chunk `delay` s each way."""
    parts = urlsplit(database)
    with SlowLink(f"{parts.hostname}:{parts.port or 5432}", delay) as link:
        user = f"{parts.username}@" if parts.username else ""
        yield urlunsplit(parts._replace(netloc=f"{user}{link.address}"))


def round_trip_ms(dsn: str, delay: float) -> float:
    """The median time of `SELECT 1` through the proxy: the round trip it makes."""
    import psycopg

    with far(dsn, delay) as through, psycopg.connect(through, autocommit=True) as conn:
        times = []
        for _ in range(50):
            began = time.perf_counter()
            conn.execute("SELECT 1").fetchall()
            times.append(time.perf_counter() - began)
    return statistics.median(times) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tag", default="", help="names the result files (e.g. main)")
    parser.add_argument(
        "--baseline",
        metavar="PYTHON",
        help="also run both engines with this interpreter (another checkout's venv), "
        "interleaved in the same rounds",
    )
    parser.add_argument(
        "--engines",
        default=",".join(ENGINES),
        help="which of sqlite,postgres to run (default both)",
    )
    parser.add_argument(
        "--db-delay-ms",
        type=float,
        default=0.0,
        help="also run PostgreSQL through a proxy delaying each way by this much (postgres-far)",
    )
    args = parser.parse_args()
    chosen = tuple(e for e in ENGINES if e in args.engines.split(","))
    if not chosen or "sqlite" not in chosen:
        parser.error("--engines must include sqlite (the others are compared with it)")
    dsn = os.environ.get("SPAREGRID_TEST_POSTGRES", "")
    if not dsn and (chosen != ("sqlite",) or args.db_delay_ms):
        parser.error("set SPAREGRID_TEST_POSTGRES to a PostgreSQL server's DSN")
    engines = chosen + (("postgres-far",) if args.db_delay_ms else ())
    delay = args.db_delay_ms / 1000
    if delay:
        args.round_trip_ms = round_trip_ms(dsn, delay)
        print(f"round trip to the database through the proxy: {args.round_trip_ms:.2f} ms")
    configs = [(e, sys.executable) for e in engines]
    if args.baseline:
        configs += [(f"{e} (baseline)", args.baseline) for e in engines]
    runs: dict[str, list[dict[str, float]]] = {name: [] for name, _ in configs}
    for n in range(args.rounds):
        for name, python in configs if n % 2 == 0 else configs[::-1]:
            result = one_round(name.split()[0], python, dsn, args.tasks, delay)
            print(f"round {n + 1} {name}: {result}", flush=True)
            runs[name].append(result)
    report(runs, args)
    return 0


def report(runs: dict[str, list[dict[str, float]]], args: argparse.Namespace) -> None:
    med = {e: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for e, rs in runs.items()}
    lines = [
        f"sparegrid engines benchmark{' (' + args.tag + ')' if args.tag else ''} — "
        f"{platform.node()}, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d %H:%M')}, "
        f"{args.tasks} echo tasks, 2 workers with default settings, "
        f"median of {args.rounds} interleaved rounds"
        + (f"; baseline: {args.baseline}" if args.baseline else "")
        + (
            f"; postgres-far: {args.db_delay_ms} ms each way through a proxy, a round trip "
            f"of {args.round_trip_ms:.2f} ms measured"
            if args.db_delay_ms
            else ""
        ),
        "CPU ms per verified result (medians): coordinator; the 2 worker processes; their "
        "executor children; the database server (SQLite's is in the coordinator's)",
        f"{'engine':<22}{'tasks/s':>10}{'coordinator':>13}{'workers':>9}{'children':>10}"
        f"{'db server':>11}   rounds (tasks/s)",
    ]
    for e, rs in runs.items():
        each = ", ".join(f"{r['tasks_per_s']:.0f}" for r in rs)
        server = med[e].get("db_server_cpu_ms_per_result", 0.0)
        shown = f"{server:.3f}" if e.startswith("postgres") else "-"
        worker = med[e].get("worker_cpu_ms_per_result", 0.0)
        child = med[e].get("child_cpu_ms_per_result", 0.0)
        lines.append(
            f"{e:<22}{med[e]['tasks_per_s']:>10,.0f}{med[e]['cpu_ms_per_result']:>13.3f}"
            f"{worker:>9.3f}{child:>10.3f}{shown:>11}   {each}"
        )
    for engine in ("postgres", "postgres-far"):
        for suffix in ("", " (baseline)"):
            if f"{engine}{suffix}" in med:
                ratio = (
                    med[f"{engine}{suffix}"]["tasks_per_s"] / med[f"sqlite{suffix}"]["tasks_per_s"]
                )
                named = f"{engine} / sqlite{suffix}"
                lines.append(f"{named:<32}{ratio:>6.2f}x   target >= 1.00x")
    for engine in ENGINES:
        if f"{engine} (baseline)" in med:
            ratio = med[engine]["tasks_per_s"] / med[f"{engine} (baseline)"]["tasks_per_s"]
            lines.append(f"{engine + ' / its baseline':<32}{ratio:>6.2f}x")
    text = "\n".join(lines)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = f"engines-{args.tag + '-' if args.tag else ''}{stamp}"
    (RESULTS / f"{name}.txt").write_text(text + "\n")
    (RESULTS / f"{name}.json").write_text(
        json.dumps({"tasks": args.tasks, "median": med, "rounds": runs}, indent=2) + "\n"
    )


if __name__ == "__main__":
    sys.exit(main())
