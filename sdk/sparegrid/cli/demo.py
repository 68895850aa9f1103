"""`sparegrid demo`: a coordinator, workers and real jobs, end to end, in a temp dir.

It starts `coordinator serve` and `worker run` as child processes (each worker owned by a
volunteer account of its own), creates a client account,
uploads an 8 MiB random file, runs a checksum job over it, an echo job, an inference job
(a small PyTorch model, when torch is installed) and a render job (a 4-frame Blender scene
made here, when bpy is installed), verifies every receipt, compares every checksum and
every model output with one computed here, shows the nodes and the
ledger check, then stops the children and removes the temp dir (unless --keep).
"""

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sparegrid.cli import output
from sparegrid.cli.admin import nodes_table
from sparegrid.cli.procs import DemoError, Processes, child_env
from sparegrid.sdk import AdminClient, Client, Job, JobState, SparegridError, VerifyReport
from sparegrid.sdk.config import ENV_COORDINATOR_KEY, Connection
from sparegrid.sdk.retry import RetryPolicy

INPUT_SIZE = 8 * 1024 * 1024
DEMO_CREDIT = 1_000_000
START_TIMEOUT = 60.0
RETRY = RetryPolicy(max_attempts=8, initial_backoff=0.25, max_backoff=2.0)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "demo", help="run a coordinator, workers and jobs end to end in a temp dir"
    )
    p.add_argument("--keep", action="store_true", help="keep the temp dir and its logs")
    p.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    p.add_argument("--tasks", type=int, default=64, help="checksum tasks (default 64)")
    p.add_argument(
        "--timeout", type=float, default=300.0, help="seconds each job may take (default 300)"
    )
    p.set_defaults(func=run)


class Timings:
    def __init__(self) -> None:
        self.start = time.monotonic()
        self.steps: list[tuple[str, float, str]] = []

    @contextmanager
    def step(self, name: str, detail: str = "") -> Iterator[list[str]]:
        """Times a step; the yielded list may receive a detail to show beside it."""
        began = time.monotonic()
        details = [detail] if detail else []
        output.err().print(f"[bold]>[/] {name}")
        yield details
        self.steps.append((name, time.monotonic() - began, "; ".join(details)))

    def table(self) -> Any:
        t = output.table("step", "time", "detail", title="sparegrid demo")
        for name, seconds, detail in self.steps:
            t.add_row(name, output.duration(seconds), detail)
        t.add_row("[bold]total[/]", output.duration(time.monotonic() - self.start), "")
        return t


# Blender's default scene with the cube moving over 4 frames, tiny and quick to render.
SCENE_SCRIPT = """
import sys, bpy
bpy.ops.wm.read_factory_settings(use_empty=False)
scene = bpy.context.scene
scene.render.engine = "CYCLES"
scene.cycles.samples = 8
scene.cycles.use_denoising = False
scene.render.resolution_x, scene.render.resolution_y = 64, 48
scene.frame_start, scene.frame_end = 1, 4
cube = bpy.data.objects["Cube"]
cube.keyframe_insert("location", frame=1)
cube.location = (1.5, 0.0, 0.5)
cube.keyframe_insert("location", frame=4)
bpy.ops.wm.save_as_mainfile(filepath=sys.argv[1], compress=True)
"""


class Demo:
    def __init__(self, root: Path, args: argparse.Namespace, procs: Processes) -> None:
        self.root = root
        self.args = args
        self.procs = procs
        self.timings = Timings()
        self.address = ""

    def run(self) -> None:
        admin_key = self.start_coordinator()
        # the key the demo's coordinator pinned in the demo's private config home: the
        # demo's clients check countersignatures against it, and pin nothing of their own
        host, _, port = self.address.rpartition(":")
        pin = self.root / "config" / "sparegrid" / "coordinators" / f"{host}_{port}.pub"
        saved = os.environ.get(ENV_COORDINATOR_KEY)
        os.environ[ENV_COORDINATOR_KEY] = pin.read_text().strip()
        try:
            self.run_jobs(admin_key)
        finally:
            if saved is None:
                os.environ.pop(ENV_COORDINATOR_KEY, None)
            else:
                os.environ[ENV_COORDINATOR_KEY] = saved

    def run_jobs(self, admin_key: str) -> None:
        with AdminClient(connection=Connection(self.address, admin_key), retry=RETRY) as admin:
            api_key = self.create_account(admin)
            self.start_workers(admin)
            with Client(connection=Connection(self.address, api_key), retry=RETRY) as client:
                self.checksum_job(client)
                self.echo_job(client)
                self.inference_job(client)
                self.render_job(client)
            self.show_nodes_and_ledger(admin)

    def start_coordinator(self) -> str:
        coord = self.root / "coord"
        with self.timings.step("start coordinator") as detail:
            proc = self.procs.start(
                "coordinator",
                "coordinator",
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
                str(coord),
            )
            self.address = self.procs.wait_for_file(coord / "coordinator.addr", proc, START_TIMEOUT)
            admin_key = self.procs.wait_for_file(coord / "admin.key", proc, START_TIMEOUT)
            detail.append(f"listening on {self.address}")
        return admin_key

    def create_account(self, admin: AdminClient) -> str:
        with self.timings.step("create account", f"demo, {DEMO_CREDIT} credit"):
            _, key = admin.create_account("demo", credit=DEMO_CREDIT)
        return key

    def start_workers(self, admin: AdminClient) -> None:
        """One worker per volunteer, each proving its owner account with the account's key:
        results of nodes without one never count as votes or checks."""
        n = self.args.workers
        with self.timings.step(f"start {n} workers") as detail:
            for i in range(1, n + 1):
                _, owner_key = admin.create_account(f"volunteer{i}", credit=0)
                data_dir = str(self.root / f"node{i}")
                self.procs.start(
                    f"node{i}",
                    "worker",
                    "run",
                    "--coordinator",
                    self.address,
                    "--data-dir",
                    data_dir,
                    "--name",
                    f"demo-node{i}",
                    "--devices",
                    "cpu",  # the demo's kinds need no GPU: lend the CPU, on any machine
                    env={"SPAREGRID_OWNER_KEY": owner_key},
                )
            online = self.wait_for_nodes(admin, n)
            detail.append(f"{online} online, owners volunteer1..{n}")

    def wait_for_nodes(self, admin: AdminClient, n: int) -> int:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            self.procs.check()
            online = sum(1 for node in admin.nodes() if node.state == "online")
            if online >= n:
                return online
            time.sleep(0.2)
        raise DemoError(f"{n} workers did not come online within {START_TIMEOUT:g}s")

    def follow(self, job: Job) -> Job:
        with output.job_progress(job) as on_progress:
            job.wait(timeout=self.args.timeout, on_progress=on_progress)
        if job.state is not JobState.SUCCEEDED:
            raise DemoError(f"{job.kind} job {job.id} ended {job.state.value}: {job.error or '-'}")
        return job

    def checksum_job(self, client: Client) -> None:
        path = self.root / "input.bin"
        path.write_bytes(os.urandom(INPUT_SIZE))
        with self.timings.step("upload input", output.size(INPUT_SIZE)) as detail:
            began = time.monotonic()
            with output.transfer("upload input.bin", INPUT_SIZE) as progress:
                digest = client.upload(path, on_progress=progress)
            rate = INPUT_SIZE / max(time.monotonic() - began, 1e-6) / 2**20
            detail.append(f"{rate:.0f} MiB/s")
        tasks = self.args.tasks
        with self.timings.step("checksum job", f"{tasks} tasks") as detail:
            job = self.follow(client.submit("checksum", {"tasks": tasks}, {"data": digest}))
            detail.append(f"job {job.id}")
        with self.timings.step("verify checksum results") as detail:
            detail.append(self.check_checksums(job, path.read_bytes()))

    def check_checksums(self, job: Job, data: bytes) -> str:
        results = sorted(job.results(), key=lambda r: r.index)
        n = len(results)
        if n != self.args.tasks:
            raise DemoError(f"checksum job returned {n} results, expected {self.args.tasks}")
        report = job.verify()
        problems = [f"task {f.index}: {f.reason}" for f in report.failures]
        for r in results:
            part = data[r.index * len(data) // n : (r.index + 1) * len(data) // n]
            got = r.output("sha256").decode().strip()
            if got != hashlib.sha256(part).hexdigest():
                problems.append(f"task {r.index}: checksum {got[:16]}… is wrong")
        if problems:
            raise DemoError("checksum results failed: " + "; ".join(problems[:5]))
        return f"{report.ok} receipts verified, {n} checksums match"

    def echo_job(self, client: Client) -> None:
        tasks = self.args.workers * 4
        with self.timings.step("echo job", f"{tasks} tasks") as detail:
            job = self.follow(client.echo("hello from sparegrid", tasks=tasks))
            report = verified(job, "echo")
            detail.append(f"{report.ok} receipts verified")

    def inference_job(self, client: Client) -> None:
        """A small PyTorch model, exported here, run by the workers, checked against a local run."""
        try:
            import torch
        except ImportError:
            with self.timings.step("inference job", "skipped: torch is not installed"):
                return
        with self.timings.step("inference job") as detail:
            torch.manual_seed(0)
            model = torch.nn.Sequential(
                torch.nn.Linear(32, 128), torch.nn.GELU(), torch.nn.Linear(128, 8)
            ).eval()
            inputs = torch.randn(1024, 32)
            job = client.infer(model, inputs, batch_size=64, shard_batches=4)
            outputs = job.result(timeout=self.args.timeout)
            with torch.inference_mode():
                expected = model(inputs)
            if not torch.allclose(outputs, expected, rtol=1e-4, atol=1e-5):
                raise DemoError("inference outputs differ from the same model run locally")
            report = verified(job.job, "inference")
            detail.append(f"{len(inputs)} samples in {report.ok} shards, match a local run")

    def render_job(self, client: Client) -> None:
        """A small animated scene, made here with Blender, rendered frame by frame."""
        import importlib.util

        if importlib.util.find_spec("bpy") is None:
            with self.timings.step("render job", "skipped: bpy (Blender) is not installed"):
                return
        scene = self.root / "scene.blend"
        with self.timings.step("render job") as detail:
            made = subprocess.run(
                [sys.executable, "-c", SCENE_SCRIPT, str(scene)], capture_output=True, text=True
            )
            if made.returncode != 0 or not scene.is_file():
                raise DemoError(f"could not make the demo scene: {made.stderr.strip()[-300:]}")
            job = self.follow(client.render(scene, frames="1-4", format="png"))
            results = job.results()
            frames = sorted(ref.name for r in results for ref in r.outputs)
            if frames != [f"frame_{i:04d}.png" for i in range(1, 5)]:
                raise DemoError(f"render job returned {frames}, expected frames 1 to 4")
            if any(not r.output(r.outputs[0].name).startswith(b"\x89PNG") for r in results):
                raise DemoError("a rendered frame is not a PNG image")
            report = verified(job, "render")
            detail.append(f"4 frames 64x48 with Cycles, {report.ok} receipts verified")

    def show_nodes_and_ledger(self, admin: AdminClient) -> None:
        output.show(nodes_table(admin.nodes()))
        with self.timings.step("ledger check") as detail:
            check = admin.ledger_check()
            if not check.balanced:
                raise DemoError("ledger does not balance: " + "; ".join(check.problems))
            line = f"{check.transactions} transactions, {check.entries} entries, sum {check.total}"
            print(f"ledger balances: {line}")
            detail.append(line)


def verified(job: Job, what: str) -> VerifyReport:
    """The job's receipt report; DemoError naming the first receipt that fails."""
    report = job.verify()
    if not report.passed:
        raise DemoError(f"{what} receipts failed: {report.failures[0].reason}")
    return report


def print_tails(procs: Processes) -> None:
    console = output.err()
    for name, tail in procs.tails():
        console.rule(name)
        console.print(tail or "(empty)", markup=False, highlight=False)


def run(args: argparse.Namespace) -> int:
    if args.workers < 1 or args.tasks < 1:
        output.error("--workers and --tasks must be at least 1")
        return 1
    root = Path(tempfile.mkdtemp(prefix="sparegrid-demo-"))
    procs = Processes(root, child_env(root))
    demo = Demo(root, args, procs)
    failure: str | None = None
    try:
        demo.run()
    except (DemoError, SparegridError, OSError) as exc:
        failure = f"{exc} [{exc.code}]" if isinstance(exc, SparegridError) else str(exc)
    except Exception as exc:  # a bug: still stop the children and show their logs
        failure = f"{type(exc).__name__}: {exc}"
    except KeyboardInterrupt:
        failure = "interrupted"
    finally:
        with demo.timings.step("stop workers and coordinator"):
            procs.stop_all()
    if failure:
        print_tails(procs)
        output.error(f"demo failed: {failure}")
    else:
        output.show(demo.timings.table())
    if args.keep:
        output.note(f"kept {root} (logs: {root}/*.log)")
    else:
        shutil.rmtree(root, ignore_errors=True)
        if failure:
            output.hint("run `sparegrid demo --keep` to keep the logs and data")
    return 1 if failure else 0
