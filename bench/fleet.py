"""Fleet simulator: many workers speaking the real protocol against one real coordinator.

A real coordinator process (`sparegrid coordinator serve`) and a few simulator processes
(`bench/fleetsim.py`), each holding hundreds or thousands of worker sessions on one event loop. Every simulated
worker is a node of its own: its own Ed25519 key and its own channel, the worker's own
handshake (`sparegrid.worker.upstream.session.connect`: Hello, signed Challenge, Welcome), its
heartbeats at the interval Welcome asks for, credit per device, the real echo executor,
statements built by the worker's own code (`messages.statement_bytes`) and one signature
per batch (`wire.receipt.sign_batch`), and an outbox kept in memory that is resent after a
reconnect, with the unacknowledged attempts named in Hello, as the worker does.

Scenarios (each a separate coordinator, measured from outside through /proc):

- idle: N workers connect at once and only heartbeat: time to register all, handshake
  errors, refusals (UNAVAILABLE with a retry hint, retried), sessions held, coordinator
  CPU (seconds of CPU per second of wall time) and RSS over a quiet window;
- tasks: an echo job of 20,000 tiny tasks on N workers (default worker settings), tasks/s;
- churn: the same while every worker cuts its stream every 2-6 s;
- crash: the same, with the coordinator SIGKILLed mid-run and restarted on the same port.
- failover (PostgreSQL): the same with two coordinators over the database, the workers and
  the client given both; the serving one is SIGKILLed at 40% and the standby takes over.
  Reports how long until the standby served, and until the job moved again.

After each task scenario: the job succeeded, every task succeeded exactly once in the
store, no node was paid twice for one task, and `admin ledger check` balances.

    python bench/fleet.py --idle 1000,5000,10000 --tasks-at 10,100,1000 --churn 100 --crash 100
    python bench/fleet.py --idle 1000 --database postgres     # SPAREGRID_TEST_POSTGRES or local
"""

import argparse
import contextlib
import json
import os
import platform
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

from sparegrid.sdk import AdminClient, Client
from sparegrid.worker.executors.builtin import EchoExecutor
from sparegrid.worker.executors.registry import ExecutorSpec
from sparegrid.worker.node.devices import DeviceInfo

RESULTS = Path(__file__).parent / "results"
SIM = Path(__file__).resolve().parent / "fleetsim.py"  # one simulator process
CLK_TCK = os.sysconf("SC_CLK_TCK")
PG_DEFAULT = "postgresql://postgres@127.0.0.1:5432/test"
DEVICE = DeviceInfo(index=0, kind="cpu", name="fleet-sim")
ECHO = ExecutorSpec("echo", EchoExecutor.version, "sparegrid.worker.executors.builtin:EchoExecutor")
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 64 << 20)]


# --- the coordinator, from outside ---------------------------------------------------------


@dataclass
class Coordinator:
    root: Path
    database: str
    src: str = ""  # another checkout whose coordinator code to run ("": this one)
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def data(self) -> Path:
        return self.root / "coord"

    def start(self) -> None:
        self.launch()
        self.wait_serving()

    def launch(self) -> None:
        (self.data / "coordinator.addr").unlink(missing_ok=True)
        self.data.mkdir(parents=True, exist_ok=True)
        log = (self.root / "coordinator.log").open("ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "sparegrid.cli.main",
                "coordinator",
                "serve",
                "--listen",
                f"127.0.0.1:{self.port}",
                "--data-dir",
                str(self.data),
                "--database",
                self.database,
                "--log-level",
                "WARNING",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=coordinator_env(self.src),
        )

    def serving(self) -> bool:
        return (self.data / "coordinator.addr").exists()

    def wait_serving(self) -> None:
        assert self.proc is not None
        addr = self.data / "coordinator.addr"
        deadline = time.monotonic() + 60
        while not addr.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"coordinator did not start; see {self.root}/coordinator.log")
            time.sleep(0.05)
        self.port = int(addr.read_text().strip().rsplit(":", 1)[1])

    def admin(self) -> AdminClient:
        return AdminClient(self.address, api_key=(self.data / "admin.key").read_text().strip())

    def cpu_seconds(self) -> float:
        assert self.proc is not None
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime

    def rss_mb(self) -> float:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def coordinator_env(src: str = "") -> dict[str, str]:
    """The coordinator's environment: with `src` (another checkout, e.g. main's, for a
    before/after comparison) its code runs the coordinator; the simulated workers always
    run this checkout's."""
    if not src:
        return dict(os.environ)
    roots = [str(Path(src) / d) for d in ("coordinator", "proto", "sdk", "worker")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(roots)}


# --- the driver ----------------------------------------------------------------------------


class Fleet:
    """Simulator processes holding `count` workers between them."""

    def __init__(
        self,
        root: Path,
        address: str,
        count: int,
        procs: int,
        prefetch: int = 0,
        churn: tuple[float, float] | None = None,
        keys: list[str] | None = None,
    ) -> None:
        self.root, self.procs = root, []
        self.status: list[Path] = []
        per = -(-count // procs)
        for p in range(procs):
            first, n = p * per, min(per, count - p * per)
            if n <= 0:
                break
            status = root / f"sim{p}.json"
            status.unlink(missing_ok=True)
            argv = [sys.executable, str(SIM), "--address", address, "--count", str(n)]
            argv += ["--first", str(first), "--status", str(status), "--prefetch", str(prefetch)]
            if churn:
                argv += ["--churn", str(churn[0]), str(churn[1])]
            if keys:
                keyfile = root / f"keys{p}.json"
                keyfile.write_text(json.dumps(keys[first : first + n]))
                argv += ["--keys", str(keyfile)]
            log = (root / f"sim{p}.log").open("ab")
            self.procs.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT))
            self.status.append(status)

    def totals(self) -> dict[str, Any]:
        total: dict[str, Any] = {"registered": 0, "connected": 0, "refused": 0, "results": 0}
        total |= {"reconnects": 0, "errors": Counter(), "register_seconds": 0.0}
        for path in self.status:
            with contextlib.suppress(FileNotFoundError, json.JSONDecodeError):
                s = json.loads(path.read_text())
                for key in ("registered", "connected", "refused", "results", "reconnects"):
                    total[key] += s[key]
                total["errors"].update(s["errors"])
                total["register_seconds"] = max(
                    total["register_seconds"], s["register_seconds"] or 0
                )
        return total

    def cpu_seconds(self) -> float:
        """CPU time the simulator processes have used: the other half of the machine."""
        total = 0.0
        for proc in self.procs:
            with contextlib.suppress(OSError):
                stat = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += (int(stat[11]) + int(stat[12])) / CLK_TCK
        return total

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def database_url(kind: str, root: Path) -> tuple[str, str]:
    """(URL for --database, PostgreSQL schema to drop afterwards or "")."""
    if kind == "sqlite":
        return f"sqlite:///{root / 'coord' / 'coordinator.db'}", ""
    import psycopg

    dsn = os.environ.get("SPAREGRID_TEST_POSTGRES", PG_DEFAULT)
    schema = f"fleet_{os.getpid()}_{int(time.time())}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    separator = "&" if "?" in dsn else "?"
    return f"{dsn}{separator}options=-csearch_path%3D{schema}", schema


def drop_schema(schema: str) -> None:
    if schema:
        import psycopg

        dsn = os.environ.get("SPAREGRID_TEST_POSTGRES", PG_DEFAULT)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


def idle(root: Path, count: int, args: argparse.Namespace) -> dict[str, Any]:
    """`count` workers connect at once and only heartbeat."""
    url, schema = database_url(args.database, root)
    coord = Coordinator(root, url, args.src)
    coord.start()
    fleet = Fleet(root, coord.address, count, args.procs)
    row: dict[str, Any] = {"scenario": "idle", "nodes": count, "database": args.database}
    row["coordinator"] = args.src_label
    try:
        start, cpu_start, sim_start = time.monotonic(), coord.cpu_seconds(), fleet.cpu_seconds()
        deadline = start + args.register_timeout
        totals = fleet.totals()
        while totals["registered"] < count and time.monotonic() < deadline:
            time.sleep(0.5)
            totals = fleet.totals()
        row["register_cpu_core"] = round(
            (coord.cpu_seconds() - cpu_start) / (time.monotonic() - start), 3
        )
        row["register_sim_cpu_cores"] = round(
            (fleet.cpu_seconds() - sim_start) / (time.monotonic() - start), 2
        )
        row["registered"] = totals["registered"]
        row["register_seconds"] = round(totals["register_seconds"], 1)
        row["refused_retried"] = totals["refused"]
        row["errors"] = sum(totals["errors"].values())
        row["error_kinds"] = dict(totals["errors"])
        time.sleep(args.settle)  # let the heartbeats spread out before measuring
        cpu0, t0 = coord.cpu_seconds(), time.monotonic()
        time.sleep(args.window)
        row["idle_cpu_core"] = round((coord.cpu_seconds() - cpu0) / (time.monotonic() - t0), 3)
        row["rss_mb"] = round(coord.rss_mb())
        totals = fleet.totals()
        row["sessions_held"] = totals["connected"]
        with coord.admin() as admin:
            row["online_nodes"] = sum(1 for n in admin.nodes() if n.state == "online")
    finally:
        fleet.stop()
        coord.kill(signal.SIGTERM)
        drop_schema(schema)
    return row


def tasks(root: Path, count: int, args: argparse.Namespace, scenario: str) -> dict[str, Any]:
    """An echo job of `args.tasks` tasks on `count` workers of their own owner accounts."""
    url, schema = database_url(args.database, root)
    coord = Coordinator(root, url, args.src)
    standby = None
    if scenario == "failover":  # fixed ports: the list is given before the standby listens
        coord.port = free_port()
        standby = Coordinator(root / "standby", url, args.src, port=free_port())
    coord.start()
    address = coord.address
    if standby is not None:
        standby.data.mkdir(parents=True)
        # coordinators over one database share the key that countersigns results
        for name in ("coordinator.key", "admin.key"):  # as an operator copies them
            key = standby.data / name
            key.write_bytes((coord.data / name).read_bytes())
            key.chmod(0o600)
        standby.launch()
        address = f"{coord.address},{standby.address}"
    row: dict[str, Any] = {"scenario": scenario, "nodes": count, "database": args.database}
    row["coordinator"] = args.src_label
    fleet = None
    try:
        with coord.admin() as admin:
            keys = [admin.create_account(f"vol{i}", credit=0)[1] for i in range(count)]
            _, client_key = admin.create_account("bench", credit=10**12)
        churn = (2.0, 6.0) if scenario == "churn" else None
        fleet = Fleet(root, address, count, min(args.procs, count), args.prefetch, churn, keys)
        deadline = time.monotonic() + args.register_timeout
        while fleet.totals()["registered"] < count and time.monotonic() < deadline:
            time.sleep(0.2)
        killed_at = 0.0
        with Client(address, api_key=client_key) as client:
            cpu0, start = coord.cpu_seconds(), time.perf_counter()
            job = client.echo("", tasks=args.tasks)
            killed = False
            while True:
                try:
                    current = client.get_job(job.id)
                except grpc.RpcError:  # the coordinator is restarting
                    time.sleep(0.2)
                    continue
                done = current.counts.done
                if current.finished:
                    break
                if scenario in ("crash", "failover") and not killed and done >= args.tasks * 0.4:
                    row["killed_at_tasks"] = done
                    cpu_before = coord.cpu_seconds()
                    killed_at = time.monotonic()
                    coord.kill()
                    if standby is None:
                        coord.start()  # same port, same database
                    else:
                        while not standby.serving():
                            time.sleep(0.02)
                        row["standby_serving_s"] = round(time.monotonic() - killed_at, 2)
                        coord = standby  # its CPU from here on; the audit reads its store
                    cpu0 -= cpu_before  # the new process starts its CPU count at 0
                    killed = True
                    continue
                if killed_at and "moving_again_s" not in row and done > row["killed_at_tasks"]:
                    row["moving_again_s"] = round(time.monotonic() - killed_at, 2)
                if time.perf_counter() - start > args.job_timeout:
                    raise RuntimeError(f"job not done after {args.job_timeout}s: {current}")
                time.sleep(0.1)
            elapsed = time.perf_counter() - start
            row["state"] = str(current.state)
            row["tasks"] = args.tasks
            row["seconds"] = round(elapsed, 1)
            row["tasks_per_s"] = round(args.tasks / elapsed)
            row["cpu_ms_per_task"] = round((coord.cpu_seconds() - cpu0) * 1000 / args.tasks, 3)
            row["job_id"] = job.id
        row["reconnects"] = fleet.totals()["reconnects"]
        with coord.admin() as admin:
            row["ledger_balanced"] = admin.ledger_check().balanced
        row |= audit(coord, job.id, args.database, url)
    finally:
        if fleet is not None:
            fleet.stop()
        coord.kill(signal.SIGTERM)
        if standby is not None:
            standby.kill(signal.SIGTERM)
        drop_schema(schema)
    return row


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def audit(coord: Coordinator, job_id: str, database: str, url: str) -> dict[str, Any]:
    """Every task succeeded exactly once; no node paid twice for one task (from the store)."""
    queries = {
        "tasks_succeeded": "SELECT COUNT(*) FROM tasks WHERE job_id = ? AND state = 'succeeded'",
        "tasks_not_succeeded": "SELECT COUNT(*) FROM tasks WHERE job_id = ? AND state <> 'succeeded'",
        "attempts_succeeded_twice": (
            "SELECT COUNT(*) FROM (SELECT task_id FROM attempts WHERE job_id = ?"
            " AND state = 'succeeded' GROUP BY task_id, node_id HAVING COUNT(*) > 1) t"
        ),
        "paid_twice": (
            "SELECT COUNT(*) FROM (SELECT e.task_id FROM entries e WHERE e.job_id = ?"
            " AND substr(e.account, 1, 5) = 'node:' AND e.amount > 0"
            " GROUP BY e.task_id, e.account HAVING COUNT(*) > 1) t"
        ),
    }
    out: dict[str, Any] = {}
    if database == "sqlite":
        conn = sqlite3.connect(coord.data / "coordinator.db")
        for name, sql in queries.items():
            out[name] = conn.execute(sql, (job_id,)).fetchone()[0]
        conn.close()
    else:
        import psycopg

        with psycopg.connect(url) as conn:
            for name, sql in queries.items():
                row = conn.execute(sql.replace("?", "%s"), (job_id,)).fetchone()
                out[name] = row[0] if row else None
    return out


def report(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    lines = [
        f"sparegrid fleet simulator — {platform.node()}, {os.cpu_count()} cores, "
        f"{time.strftime('%Y-%m-%d %H:%M')}, label {args.label!r}, database {args.database}",
        "",
        f"{'idle':<6}{'coord.':>7}{'nodes':>7}{'registered':>11}{'in s':>6}{'errors':>7}"
        f"{'refused':>8}{'held':>7}{'reg. CPU':>9}{'idle CPU':>9}{'RSS MB':>8}",
    ]
    for r in rows:
        if r["scenario"] == "idle":
            lines.append(
                f"{'':<6}{r['coordinator']:>7}{r['nodes']:>7}{r['registered']:>11}"
                f"{r['register_seconds']:>6}{r['errors']:>7}{r['refused_retried']:>8}"
                f"{r['sessions_held']:>7}{r['register_cpu_core']:>9.1%}"
                f"{r['idle_cpu_core']:>9.1%}{r['rss_mb']:>8}"
            )
    lines += [
        "",
        f"{'tasks':<8}{'coord.':>7}{'nodes':>6}{'tasks/s':>9}{'CPU ms/task':>12}{'state':>11}"
        f"{'once':>6}"
        f"{'paid 2x':>8}{'balanced':>9}{'reconn.':>8}",
    ]
    for r in rows:
        if r["scenario"] != "idle":
            once = r.get("tasks_succeeded") == r["tasks"] and not r.get("attempts_succeeded_twice")
            lines.append(
                f"{r['scenario']:<8}{r['coordinator']:>7}{r['nodes']:>6}{r['tasks_per_s']:>9}"
                f"{r['cpu_ms_per_task']:>12}"
                f"{r['state']:>11}{'yes' if once else 'NO':>6}{r['paid_twice']:>8}"
                f"{'yes' if r['ledger_balanced'] else 'NO':>9}{r['reconnects']:>8}"
            )
    for r in rows:
        if r["scenario"] == "failover":
            lines.append(
                f"failover ({r['coordinator']}, {r['nodes']} nodes): killed at "
                f"{r.get('killed_at_tasks')} tasks; the standby served after "
                f"{r.get('standby_serving_s')} s, the job moved again after "
                f"{r.get('moving_again_s')} s"
            )
    lines.append("")
    lines.append("targets: 10,000 idle sessions <= 25% of a core, RSS <= 1.5 GB, all registered")
    lines.append("within 30 s with 0 errors; every task once, none paid twice, ledger balanced")
    text = "\n".join(lines)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = f"fleet-{args.label}-{stamp}" if args.label else f"fleet-{stamp}"
    (RESULTS / f"{name}.txt").write_text(text + "\n")
    (RESULTS / f"{name}.json").write_text(json.dumps(rows, indent=2, default=str) + "\n")


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idle", type=ints, default=[1000, 5000, 10000], help="fleet sizes")
    parser.add_argument("--tasks-at", type=ints, default=[10, 100, 1000], help="fleet sizes")
    parser.add_argument("--churn", type=ints, default=[100], help="fleet sizes")
    parser.add_argument("--crash", type=ints, default=[100], help="fleet sizes")
    parser.add_argument(
        "--failover", type=ints, default=[], help="fleet sizes (with --database postgres)"
    )
    parser.add_argument("--tasks", type=int, default=20000)
    parser.add_argument("--database", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--procs", type=int, default=4, help="simulator processes")
    parser.add_argument("--prefetch", type=int, default=2, help="credit per worker (the default)")
    parser.add_argument("--register-timeout", type=float, default=120.0)
    parser.add_argument("--job-timeout", type=float, default=900.0)
    parser.add_argument("--settle", type=float, default=6.0)
    parser.add_argument(
        "--window",
        type=float,
        default=60.0,
        help="idle CPU measured over (a whole idle heartbeat interval: every worker once)",
    )
    parser.add_argument("--label", default="")
    parser.add_argument(
        "--baseline-src",
        default="",
        help="another checkout (e.g. `git archive main`) whose coordinator runs each "
        "scenario first, interleaved with this one's",
    )
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []
    plan = [("idle", n) for n in args.idle] + [("tasks", n) for n in args.tasks_at]
    plan += [("churn", n) for n in args.churn] + [("crash", n) for n in args.crash]
    if args.failover and args.database != "postgres":
        parser.error("--failover needs --database postgres (one coordinator serves a database)")
    plan += [("failover", n) for n in args.failover]
    sources = [("main", args.baseline_src)] if args.baseline_src else []
    sources.append(("this", ""))
    runs = [(s, n, label, src) for s, n in plan for label, src in sources]
    for scenario, n, args.src_label, args.src in runs:
        with tempfile.TemporaryDirectory(prefix="sparegrid-fleet-") as tmp:
            root = Path(tmp)
            try:
                row = idle(root, n, args) if scenario == "idle" else tasks(root, n, args, scenario)
            except Exception as exc:
                print(f"{scenario} at {n} failed: {exc}", file=sys.stderr)
                log = root / "coordinator.log"
                if log.exists():
                    print(log.read_text()[-3000:], file=sys.stderr)
                continue
            print(json.dumps(row), flush=True)
            rows.append(row)
    report(rows, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
