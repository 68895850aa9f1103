"""Dispatch benchmark: no-op task throughput, dispatch latency, blob MB/s, and peers.

Starts a real coordinator (SQLite, synchronous=FULL: every credit booked durably) and two
real worker processes on loopback, then measures, in one run on this machine:

- throughput: an echo job of N no-op tasks, submit -> every result verified, paid, done;
- dispatch latency: a 1-task job submitted while an idle worker is connected -> the
  assignment arrives on that worker's stream (this script plays the worker, so both
  timestamps come from one clock);
- blob upload and download MB/s through the SDK with 1 GiB of data;
- Ray and Dask on the same no-op tasks, when they are installed.

Prints a table with the ratios and saves it under bench/results/.
    python bench/dispatch.py [--tasks 20000] [--blob-mib 1024] [--latency-samples 300]
"""

import argparse
import asyncio
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from sparegrid.sdk import AdminClient, Client
from sparegrid.v1 import client_pb2, client_pb2_grpc, common_pb2, worker_pb2, worker_pb2_grpc
from sparegrid.wire import REGISTER_TAG, Signer, sha256_hex
from sparegrid.wire.receipt import sign_batch

RESULTS = Path(__file__).parent / "results"


def spawn(
    root: Path,
    name: str,
    *args: str,
    env: dict[str, str] | None = None,
    python: str = sys.executable,
) -> subprocess.Popen[bytes]:
    log = (root / f"{name}.log").open("ab")
    return subprocess.Popen(
        [python, "-m", "sparegrid.cli.main", *args],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, **(env or {})},
    )


def start_cluster(
    root: Path,
    workers: int,
    prefetch: int | None,
    sync: str,
    extra: tuple[str, ...] = (),
    python: str = sys.executable,
) -> tuple[str, list[Any]]:
    """A coordinator (with `extra` flags) and `workers` worker processes, run by `python`;
    (address, procs). Workers get `--prefetch` only when it is given: None runs them with
    the defaults."""
    data = root / "coord"
    database = f"sqlite:///{data / 'coordinator.db'}?synchronous={sync}"
    procs = [
        spawn(
            root,
            "coordinator",
            "coordinator",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            str(data),
            "--database",
            database,
            "--log-level",
            "WARNING",
            *extra,
            python=python,
        )
    ]
    addr = data / "coordinator.addr"
    deadline = time.monotonic() + 30
    while not addr.exists():
        if time.monotonic() > deadline:
            raise RuntimeError("coordinator did not start; see " + str(root / "coordinator.log"))
        time.sleep(0.05)
    address = addr.read_text().strip()
    admin = AdminClient(address, api_key=(data / "admin.key").read_text().strip())
    for i in range(workers):
        # each worker proves an owner account of its own, as volunteers do
        _, owner_key = admin.create_account(f"volunteer{i}", credit=0)
        procs.append(
            spawn(
                root,
                f"worker{i}",
                "worker",
                "run",
                "--coordinator",
                address,
                "--data-dir",
                str(root / f"node{i}"),
                "--name",
                f"bench{i}",
                "--devices",
                "cpu",  # the CPU executors these benchmarks measure, on any machine
                *(("--prefetch", str(prefetch)) if prefetch is not None else ()),
                env={"SPAREGRID_OWNER_KEY": owner_key},
                python=python,
            )
        )
    admin.close()
    return address, procs


def stop(procs: list[Any]) -> None:
    for p in reversed(procs):
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)


def wait_online(admin: AdminClient, count: int) -> None:
    deadline = time.monotonic() + 30
    while sum(1 for n in admin.nodes() if n.state == "online") < count:
        if time.monotonic() > deadline:
            raise RuntimeError("workers did not come online")
        time.sleep(0.05)


def throughput(client: Client, tasks: int) -> float:
    client.echo("", tasks=100).wait(timeout=120)  # warm up
    start = time.perf_counter()
    job = client.echo("", tasks=tasks).wait(timeout=600)
    elapsed = time.perf_counter() - start
    if job.state != "succeeded":
        raise RuntimeError(f"throughput job ended {job.state}")
    return tasks / elapsed


class Probe:
    """This process as a worker that alone can run the probe's jobs, and answers them (a
    node that never returns results is held to a window of a few tasks)."""

    def __init__(self, call: Any, signer: Signer, node_id: str) -> None:
        self.call, self.signer, self.node_id = call, signer, node_id
        self.batch = 0

    async def assignment(self) -> worker_pb2.Assignment:
        """The next assignment (acknowledgements of its answers are skipped)."""
        while True:
            message = await self.call.read()
            if message.HasField("assign"):
                return message.assign.assignments[0]

    async def answer(self, a: worker_pb2.Assignment) -> None:
        out = b"probe"
        statement = common_pb2.ResultStatement(
            job_id=a.job_id,
            task_id=a.task_id,
            attempt_id=a.attempt_id,
            node_id=self.node_id,
            outputs=[common_pb2.OutputRef(name="out", digest=sha256_hex(out), size=len(out))],
        ).SerializeToString()
        self.batch += 1
        results = worker_pb2.Results(
            batch_id=self.batch,
            statements=[statement],
            signature=sign_batch(self.signer, [statement]),
            inline_outputs={sha256_hex(out): out},
        )
        await self.call.write(worker_pb2.WorkerMessage(results=results))


async def _probe_session(channel: grpc.aio.Channel, owner_key: str) -> Probe:
    """Registers this process as a worker (of an owner account) that alone can run the
    probe's jobs."""
    signer = Signer.generate()
    metadata = (("authorization", f"Bearer {owner_key}"),)
    call = worker_pb2_grpc.WorkerServiceStub(channel).Session(metadata=metadata)
    hello = worker_pb2.Hello(
        public_key=signer.public_key,
        node_name="latency-probe",
        devices=[common_pb2.Device(index=0, kind=common_pb2.DEVICE_KIND_CPU, name="probe")],
        executors=[worker_pb2.ExecutorInfo(name="echo", version="1")],
        software={"latency-probe": "1.0"},
    )
    await call.write(worker_pb2.WorkerMessage(hello=hello))
    challenge = (await call.read()).challenge
    signature = signer.sign(REGISTER_TAG, challenge.nonce + challenge.session_id.encode())
    answer = worker_pb2.ChallengeResponse(signature=signature)
    await call.write(worker_pb2.WorkerMessage(challenge_response=answer))
    welcome = (await call.read()).welcome
    return Probe(call, signer, welcome.node_id)


# only the probe advertises the software these jobs require, so the real workers stay
# connected and idle while it measures
PROBE_SPEC = client_pb2.JobSpec(
    kind="echo",
    params=b'{"tasks": 1}',
    requirements=common_pb2.Requirements(software={"latency-probe": "1.0"}),
)


async def dispatch_latency(
    address: str, api_key: str, owner_key: str, samples: int
) -> tuple[list[float], list[float]]:
    """This process plays an idle connected worker and a client on one event loop.

    Returns two lists of ms: SubmitJob sent -> Assign received (the job is created,
    escrowed and leased durably on the way), and Credit sent -> Assign received for a
    task already queued (the worker says it is free; the lease is committed durably).
    """
    metadata = (("authorization", f"Bearer {api_key}"),)
    async with grpc.aio.insecure_channel(address) as channel:
        jobs = client_pb2_grpc.ClientServiceStub(channel)
        probe = await _probe_session(channel, owner_key)
        credit = worker_pb2.WorkerMessage(credit=worker_pb2.Credit(count=samples))
        await probe.call.write(credit)
        submitted = []
        for i in range(samples):
            request = client_pb2.SubmitJobRequest(spec=PROBE_SPEC, idempotency_key=f"s{i}")
            start = time.perf_counter()
            reply = asyncio.ensure_future(jobs.SubmitJob(request, metadata=metadata))
            assignment = await probe.assignment()
            submitted.append((time.perf_counter() - start) * 1000)
            await reply
            await probe.answer(assignment)
        # now queue work with no credit out, then hand out credit one at a time
        for i in range(samples):
            request = client_pb2.SubmitJobRequest(spec=PROBE_SPEC, idempotency_key=f"c{i}")
            await jobs.SubmitJob(request, metadata=metadata)
        credited = []
        for _ in range(samples):
            start = time.perf_counter()
            await probe.call.write(worker_pb2.WorkerMessage(credit=worker_pb2.Credit(count=1)))
            assignment = await probe.assignment()
            credited.append((time.perf_counter() - start) * 1000)
            await probe.answer(assignment)
        probe.call.cancel()
    return submitted, credited


def blob_speed(client: Client, root: Path, mib: int) -> tuple[float, float]:
    path = root / "blob.bin"
    block = os.urandom(1 << 20)
    with path.open("wb") as f:
        for i in range(mib):
            f.write(block[:-8] + i.to_bytes(8, "little"))
    start = time.perf_counter()
    digest = client.upload(path)
    up = mib / (time.perf_counter() - start)
    out = root / "blob.out"
    start = time.perf_counter()
    client.download(digest, out)
    down = mib / (time.perf_counter() - start)
    path.unlink()
    out.unlink()
    return up, down


def peer(name: str, tasks: int) -> float | None:
    runners: dict[str, Callable[[int], float]] = {"ray": _ray, "dask": _dask}
    try:
        return runners[name](tasks)
    except ImportError:
        return None
    except Exception as exc:  # a peer that fails to start must not lose our figures
        print(f"{name} failed: {exc}", file=sys.stderr)
        return None


def _ray(tasks: int) -> float:
    import ray  # type: ignore[import-not-found]

    # a fresh session directory: a stale one in /tmp/ray can keep the node from starting
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        logging_level="ERROR",
        _temp_dir=tempfile.mkdtemp(prefix="ray-"),
    )

    @ray.remote
    def noop(i: int) -> int:
        return i

    ray.get([noop.remote(i) for i in range(1000)])
    start = time.perf_counter()
    ray.get([noop.remote(i) for i in range(tasks)])
    rate = tasks / (time.perf_counter() - start)
    ray.shutdown()
    return rate


def _dask(tasks: int) -> float:
    from dask.distributed import Client as DaskClient  # type: ignore[import-not-found]
    from dask.distributed import LocalCluster

    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True) as cluster,
        DaskClient(cluster) as dc,
    ):
        dc.gather(dc.map(lambda i: i, range(1000), pure=False))
        start = time.perf_counter()
        dc.gather(dc.map(lambda i: i, range(tasks), pure=False))
        return tasks / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=20000)
    parser.add_argument("--blob-mib", type=int, default=1024)
    parser.add_argument("--latency-samples", type=int, default=300)
    parser.add_argument(
        "--prefetch", type=int, default=None, help="pin the workers' window (default: theirs)"
    )
    parser.add_argument("--no-peers", action="store_true")
    parser.add_argument(
        "--sync",
        choices=["FULL", "NORMAL"],
        default="FULL",
        help="SQLite synchronous mode: FULL fsyncs every commit (the default) [%(default)s]",
    )
    args = parser.parse_args()
    rows: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="sparegrid-bench-") as tmp:
        root = Path(tmp)
        # the latency probes submit as fast as they are answered: past one account's rate
        address, procs = start_cluster(
            root,
            workers=2,
            prefetch=args.prefetch,
            sync=args.sync,
            extra=("--client-call-rate", "0"),
        )
        try:
            admin = AdminClient(address, api_key=(root / "coord/admin.key").read_text().strip())
            _, key = admin.create_account("bench", credit=10**12)
            client = Client(address, api_key=key)
            wait_online(admin, 2)
            _, probe_key = admin.create_account("probe", credit=0)
            submitted, credited = asyncio.run(
                dispatch_latency(address, key, probe_key, args.latency_samples)
            )
            rows["sparegrid_tasks_per_s"] = throughput(client, args.tasks)
            assert admin.ledger_check().balanced
            for name, lat in (("submit", submitted), ("credit", credited)):
                lat.sort()
                rows[f"{name}_p50_ms"] = statistics.median(lat)
                rows[f"{name}_p99_ms"] = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
            if args.blob_mib:
                rows["upload_mb_s"], rows["download_mb_s"] = blob_speed(client, root, args.blob_mib)
        finally:
            stop(procs)
    if not args.no_peers:
        for name in ("ray", "dask"):
            rows[f"{name}_tasks_per_s"] = peer(name, args.tasks)
    report(rows, args)
    return 0


def report(rows: dict[str, Any], args: argparse.Namespace) -> None:
    ours = rows["sparegrid_tasks_per_s"]
    lines = [
        f"sparegrid dispatch benchmark — {platform.node()}, {os.cpu_count()} cores, "
        f"{time.strftime('%Y-%m-%d %H:%M')}, SQLite synchronous={args.sync}, "
        f"prefetch {args.prefetch or 'default (adaptive)'}",
        f"{'measure':<40}{'value':>14}  target",
        f"{'no-op tasks/s (2 workers, signed, durable)':<40}{ours:>14,.0f}",
    ]
    for name in ("ray", "dask"):
        rate = rows.get(f"{name}_tasks_per_s")
        if rate:
            lines.append(f"{name + ' no-op tasks/s':<40}{rate:>14,.0f}")
            target = "  >= 3x" if name == "ray" else ""
            lines.append(f"{'  sparegrid / ' + name:<40}{ours / rate:>13.2f}x{target}")
        else:
            lines.append(f"{name + ' no-op tasks/s':<40}{'not measured':>14}")
    for name, what in (("credit", "worker frees a slot"), ("submit", "client submits")):
        for q, target in (("p50", "<= 2"), ("p99", "<= 10")):
            label = f"dispatch {q} ms ({what})"
            lines.append(f"{label:<40}{rows[f'{name}_{q}_ms']:>14.2f}  {target}")
    if "upload_mb_s" in rows:
        lines += [
            f"{f'blob upload MB/s ({args.blob_mib} MiB)':<40}{rows['upload_mb_s']:>14.0f}  >= 500",
            f"{f'blob download MB/s ({args.blob_mib} MiB)':<40}{rows['download_mb_s']:>14.0f}  >= 500",
        ]
    text = "\n".join(lines)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (RESULTS / f"dispatch-{stamp}.txt").write_text(text + "\n")
    (RESULTS / f"dispatch-{stamp}.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
