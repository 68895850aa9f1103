"""Submit stall benchmark: how long another client waits while a huge job is submitted.

Starts a real coordinator process (SQLite with synchronous=FULL, and PostgreSQL when
SPAREGRID_TEST_POSTGRES or --postgres names one), and a probe process that calls GetAccount
in a loop on its own connection, as any other client would. Then it submits one echo job
of --tasks tasks (1,000,000 by default, the most a job may have) and cancels it, and
reports the probe's worst wait during each phase: the time the coordinator's event loop
was held, as another client feels it. Prints a table and saves it under bench/results/.

    python bench/submit_stall.py [--tasks 1000000] [--postgres DSN] [--source DIR]

`--source DIR` runs the coordinator from another checkout's source tree (e.g. an older
commit, `git archive` into DIR) to compare with.
"""

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import grpc

from sparegrid.sdk import AdminClient
from sparegrid.v1 import client_pb2, client_pb2_grpc

RESULTS = Path(__file__).parent / "results"
ROOTS = ("proto", "coordinator", "worker", "sdk")


def coordinator(
    root: Path, database: str, source: Path | None
) -> tuple[subprocess.Popen[bytes], str]:
    data = root / "coord"
    env = dict(os.environ, XDG_CONFIG_HOME=str(root / "config"))
    if source is not None:
        env["PYTHONPATH"] = os.pathsep.join(str(source / r) for r in ROOTS)
    log = (root / "coordinator.log").open("ab")
    serve = ["coordinator", "serve", "--listen", "127.0.0.1:0", "--data-dir", str(data)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "sparegrid.cli.main", *serve, "--database", database],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    addr = data / "coordinator.addr"
    deadline = time.monotonic() + 60
    while not addr.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the coordinator did not start; see {root / 'coordinator.log'}")
        time.sleep(0.05)
    return proc, addr.read_text().strip()


class Probe:
    """GetAccount in a loop on a thread of its own, with its own channel: (start, seconds)
    of every call."""

    def __init__(self, address: str, key: str) -> None:
        self.calls: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._channel = grpc.insecure_channel(address)
        self._stub = client_pb2_grpc.ClientServiceStub(self._channel)
        self._auth = (("authorization", f"Bearer {key}"),)
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "Probe":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._channel.close()

    def _run(self) -> None:
        request = client_pb2.GetAccountRequest()
        while not self._stop.is_set():
            began = time.monotonic()
            self._stub.GetAccount(request, metadata=self._auth, timeout=600)
            self.calls.append((began, time.monotonic() - began))
            time.sleep(0.002)

    def during(self, start: float, end: float) -> dict[str, Any]:
        """The calls that overlapped [start, end]: count, p50, p99 and worst wait (ms)."""
        waits = sorted(s for t, s in self.calls if t <= end and t + s >= start)
        if not waits:
            return {"calls": 0, "p50_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0}
        return {
            "calls": len(waits),
            "p50_ms": round(statistics.median(waits) * 1000, 2),
            "p99_ms": round(waits[min(len(waits) - 1, int(len(waits) * 0.99))] * 1000, 2),
            "max_ms": round(waits[-1] * 1000, 2),
        }


def run(backend: str, database: str, tasks: int, source: Path | None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="sparegrid-stall-") as tmp:
        root = Path(tmp)
        proc, address = coordinator(root, database, source)
        try:
            admin_key = (root / "coord" / "admin.key").read_text().strip()
            with AdminClient(address, api_key=admin_key) as admin:
                _, key = admin.create_account("alice", credit=3 * tasks + 10)
            channel = grpc.insecure_channel(address)
            stub = client_pb2_grpc.ClientServiceStub(channel)
            auth = (("authorization", f"Bearer {key}"),)
            spec = client_pb2.JobSpec(kind="echo", params=json.dumps({"tasks": tasks}).encode())
            # the admin's key: admins' calls are not rate-limited, and the probe's loop
            # makes hundreds a second
            with Probe(address, admin_key) as probe:
                time.sleep(1.0)
                t0 = time.monotonic()
                submitted = stub.SubmitJob(
                    client_pb2.SubmitJobRequest(spec=spec, idempotency_key=uuid.uuid4().hex),
                    metadata=auth,
                    timeout=900,
                )
                t1 = time.monotonic()
                time.sleep(1.0)
                t2 = time.monotonic()
                stub.CancelJob(
                    client_pb2.CancelJobRequest(job_id=submitted.job.job_id),
                    metadata=auth,
                    timeout=900,
                )
                t3 = time.monotonic()
                time.sleep(3.0)  # the ended job's queued tasks are swept meanwhile
                t4 = time.monotonic()
            channel.close()
            return {
                "backend": backend,
                "tasks": tasks,
                "submit_s": round(t1 - t0, 2),
                "cancel_s": round(t3 - t2, 2),
                "idle": probe.during(t0 - 1.0, t0),
                "submit": probe.during(t0, t1),
                "cancel": probe.during(t2, t3),
                "after_cancel": probe.during(t3, t4),
            }
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=60)


def postgres_database(dsn: str) -> tuple[str, str]:
    """A fresh schema in the database the DSN names; (DSN using it, schema)."""
    import psycopg

    schema = f"stall_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')  # type: ignore[arg-type]
    joiner = "&" if "?" in dsn else "?"
    return f"{dsn}{joiner}options=-csearch_path%3D{schema}", schema


def drop_schema(dsn: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')  # type: ignore[arg-type]


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| store | tasks | submit s | worst wait during submit | cancel s "
        "| worst wait during cancel | worst wait after cancel (sweep) | idle p50 / max |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['backend']} | {r['tasks']:,} | {r['submit_s']} | {r['submit']['max_ms']} ms "
            f"(p99 {r['submit']['p99_ms']}, {r['submit']['calls']} calls) | {r['cancel_s']} "
            f"| {r['cancel']['max_ms']} ms ({r['cancel']['calls']} calls) "
            f"| {r['after_cancel']['max_ms']} ms "
            f"| {r['idle']['p50_ms']} / {r['idle']['max_ms']} ms |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1_000_000)
    parser.add_argument("--postgres", default=os.environ.get("SPAREGRID_TEST_POSTGRES", ""))
    parser.add_argument("--source", type=Path, help="run the coordinator from this tree")
    parser.add_argument("--label", default="", help="added to the result file names")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        db = f"sqlite:///{Path(tmp) / 'coordinator.db'}?synchronous=FULL"
        rows.append(run("sqlite", db, args.tasks, args.source))
        print(table(rows), flush=True)
    if args.postgres:
        dsn, schema = postgres_database(args.postgres)
        try:
            rows.append(run("postgresql", dsn, args.tasks, args.source))
        finally:
            drop_schema(args.postgres, schema)
    text = table(rows)
    print(text)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = f"submit_stall{'-' + args.label if args.label else ''}-{stamp}"
    RESULTS.mkdir(exist_ok=True)
    header = (
        f"# submit stall, {platform.node()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}, {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
        f"# source: {args.source or 'this tree'}\n"
        "# worst wait: the longest GetAccount call of another client (its own process "
        "thread and connection) overlapping the phase\n\n"
    )
    (RESULTS / f"{name}.txt").write_text(header + text + "\n")
    (RESULTS / f"{name}.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(f"saved bench/results/{name}.txt and .json")


if __name__ == "__main__":
    main()
