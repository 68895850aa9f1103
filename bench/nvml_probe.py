"""NVML readings, owner detection and preemption, on a real NVIDIA GPU (or simulated).

On a machine with an NVIDIA GPU (nvidia-ml-py and a CUDA torch installed):

    python bench/nvml_probe.py                 # about a minute; saves bench/results/
    python bench/nvml_probe.py --simulate      # no GPU: the owner is played through a file

What it does, with the worker's own code (NvmlSource, DevicePolicy, the Worker daemon,
the executor sandbox) and a real coordinator process:

1. NVML readings of every GPU while idle (utilization, memory, temperature, power,
   processes), and the isolation the executor sandbox gets on this machine;
2. detection: a separate "owner" process allocates GPU memory and runs matmuls; how long
   until the policy says "paused: owner active", and whether NVML's pid is the owner's;
3. preemption, several times: a worker runs a task whose executor holds GPU memory (in the
   sandboxed child); the owner process starts; measured from the owner's start: the
   worker paused the device, the executor process is gone, NVML no longer lists it (GPU
   memory freed), the coordinator has the task queued again.

Prints a table and saves JSON and the table under bench/results/nvml-probe-*.
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
from dataclasses import asdict
from pathlib import Path
from typing import Any, ClassVar

RESULTS = Path(__file__).parent / "results"
OWNER_GPU = """
import sys, time, torch
x = torch.randn(8192, 8192, device="cuda")
hold = torch.empty(int(sys.argv[1]) << 20, dtype=torch.uint8, device="cuda")
print("owner ready", flush=True)
while True:
    x = (x @ x).clamp_(-1, 1)
    torch.cuda.synchronize()
"""


class GpuEcho:
    """An "echo" executor that holds GPU memory while it sleeps, as a real task would."""

    name: ClassVar[str] = "echo"
    version: ClassVar[str] = "probe"

    def run(self, task: Any) -> list[Any]:
        from sparegrid.worker.executors.base import ExecOutput

        params = json.loads(task.params)
        held = None
        try:
            import torch

            if torch.cuda.is_available():
                held = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")  # 1 GiB
                held.fill_(1)
                torch.cuda.synchronize()
        except ImportError:
            pass
        time.sleep(params.get("sleep_ms", 0) / 1000)
        del held
        return [ExecOutput("out", str(params.get("data", "")).encode())]


def spawn(root: Path, name: str, *args: str) -> subprocess.Popen[bytes]:
    log = (root / f"{name}.log").open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "sparegrid.cli.main", *args],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def start_coordinator(root: Path) -> tuple[subprocess.Popen[bytes], str, str]:
    data = root / "coord"
    flags = ["--listen", "127.0.0.1:0", "--heartbeat", "1", "--lease", "10"]
    proc = spawn(root, "coordinator", "coordinator", "serve", *flags, "--data-dir", str(data))
    addr = data / "coordinator.addr"
    deadline = time.monotonic() + 60
    while not addr.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the coordinator did not start; see {root / 'coordinator.log'}")
        time.sleep(0.05)
    return proc, addr.read_text().strip(), (data / "admin.key").read_text().strip()


def readings(samples: int, interval: float) -> tuple[list[dict[str, Any]], str]:
    from sparegrid.worker.node.devices import detect_devices
    from sparegrid.worker.policy.nvml import NvmlSource, NvmlUnavailable

    detection = detect_devices()
    try:
        source = NvmlSource()
    except NvmlUnavailable as exc:
        return [], f"{detection.summary}; NVML readings unavailable: {exc}"
    indices = [d.index for d in detection.devices if d.kind == "cuda"]
    rows = []
    for _ in range(samples):
        for state in source.read(indices).values():
            row = asdict(state)
            row["t"] = time.time()
            row["processes"] = [asdict(p) for p in state.processes]
            rows.append(row)
        time.sleep(interval)
    source.close()
    return rows, detection.summary


def start_owner(simulate: bool, state_file: Path, memory_mib: int) -> subprocess.Popen[bytes]:
    if simulate:
        owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        state = {"devices": {"0": {"utilization": 95, "processes": [{"pid": owner.pid}]}}}
        tmp = state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        tmp.replace(state_file)
        return owner
    return subprocess.Popen([sys.executable, "-c", OWNER_GPU, str(memory_mib)])


def stop_owner(owner: subprocess.Popen[bytes], simulate: bool, state_file: Path) -> None:
    owner.kill()
    owner.wait()
    if simulate:
        state_file.unlink(missing_ok=True)


async def detection_latency(memory_mib: int) -> dict[str, Any]:
    """Owner start -> policy says owner active, straight from NVML at 20 Hz."""
    from sparegrid.worker.policy import DevicePolicy, Mode, PolicySettings
    from sparegrid.worker.policy.nvml import NvmlSource

    source = NvmlSource()
    policy = DevicePolicy(0, PolicySettings(idle_seconds=0))
    owner = start_owner(False, Path(), memory_mib)
    started = time.monotonic()
    seen: dict[str, Any] = {"owner_pid": owner.pid}
    try:
        while time.monotonic() - started < 60:
            state = source.read([0])[0]
            decision = policy.evaluate(
                state, lambda pid: False, False, time.monotonic(), float("inf")
            )
            if decision.mode is Mode.OWNER_ACTIVE:
                seen["detected_s"] = time.monotonic() - started
                seen["reason"] = decision.reason
                seen["nvml_pids"] = [p.pid for p in state.processes]
                seen["pid_matches"] = owner.pid in seen["nvml_pids"]
                break
            await asyncio.sleep(0.05)
    finally:
        stop_owner(owner, False, Path())
        source.close()
    return seen


async def wait(predicate: Any, timeout: float, step: float = 0.005) -> float | None:
    """The monotonic time at which `predicate` was first seen true; None on timeout."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic()
        await asyncio.sleep(step)
    return None


async def requeue_time(client: Any, job_id: str) -> float | None:
    """The monotonic time at which the coordinator had the task queued again."""
    start = time.monotonic()
    while time.monotonic() - start < 30:
        job = await asyncio.to_thread(client.get_job, job_id)
        if job.counts.queued == 1:
            return time.monotonic()
        await asyncio.sleep(0.01)
    return None


def pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


async def one_trial(
    worker: Any, client: Any, nvml: Any, args: argparse.Namespace, state_file: Path, trial: int
) -> dict[str, Any]:
    """One task started, the owner arrives, and the times of what follows."""
    job = await asyncio.to_thread(client.echo, f"probe {trial}", 1, 60_000)
    started = await wait(lambda: worker.executor_pid(0) is not None and worker._device_busy(0), 60)
    pid = worker.executor_pid(0)
    if started is None or pid is None:
        raise SystemExit("the task never started")

    def on_gpu() -> bool:
        return nvml is None or pid in [p.pid for p in nvml.read([0])[0].processes]

    await wait(on_gpu, 60)  # the executor's GPU memory is allocated and visible
    await asyncio.sleep(0.5)
    owner = start_owner(args.simulate, state_file, args.owner_mib)
    t0 = time.monotonic()
    paused = await wait(lambda: worker.status()["devices"][0]["state"].startswith("paused"), 30)
    gone = await wait(lambda: pid_gone(pid), 30)
    freed = None if nvml is None else await wait(lambda: not on_gpu(), 30, 0.02)
    requeued = await requeue_time(client, job.id)
    reason = worker.status()["devices"][0]["reason"]
    stop_owner(owner, args.simulate, state_file)
    await asyncio.to_thread(client.cancel, job.id)
    await wait(lambda: worker.status()["devices"][0]["state"] == "idle-waiting", 60)
    times = [None if t is None else round(t - t0, 4) for t in (paused, gone, freed, requeued)]
    keys = ("paused_s", "executor_gone_s", "gpu_memory_freed_s", "requeued_s")
    return {"trial": trial, **dict(zip(keys, times, strict=True)), "reason": reason}


async def preemption(
    args: argparse.Namespace, root: Path
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    from sparegrid.sdk import AdminClient, Client
    from sparegrid.worker.config import WorkerConfig
    from sparegrid.worker.daemon import Worker
    from sparegrid.worker.executors import ExecutorRegistry
    from sparegrid.worker.policy.nvml import NvmlSource

    coordinator, address, admin_key = start_coordinator(root)
    state_file = root / "gpu-state.json"
    trials: list[dict[str, Any]] = []
    try:
        admin = AdminClient(address, api_key=admin_key)
        _, key = admin.create_account("probe", credit=1000)
        client = Client(address, api_key=key)
        source = "file:" + str(state_file) if args.simulate else "nvml"
        config = WorkerConfig(
            coordinator=address,
            data_dir=root / "worker",
            device_state=source,
            idle_seconds=1.0,
            poll_interval=args.poll,
            prefetch=1,
            devices="cpu" if args.simulate else (0,),  # --simulate: the CPU stands in
        )
        registry = ExecutorRegistry().with_targets(["nvml_probe:GpuEcho"])
        worker = Worker(config, executors=registry)
        run = asyncio.create_task(worker.run())
        nvml = None if args.simulate else NvmlSource()
        try:
            for trial in range(args.trials):
                trials.append(await one_trial(worker, client, nvml, args, state_file, trial))
            isolation = dict(worker.status()["isolation"])
        finally:
            worker.shutdown(force=True)
            await run
            if nvml is not None:
                nvml.close()
    finally:
        coordinator.send_signal(signal.SIGTERM)
        coordinator.wait(timeout=30)
    return trials, isolation


def table(result: dict[str, Any]) -> str:
    lines = [
        f"nvml_probe {result['when']} on {result['host']} ({result['mode']})",
        f"devices: {result['devices']}",
        "",
    ]
    idle = result["idle_readings"]
    if idle:
        lines.append(
            "idle readings (GPU 0): utilization %, memory used MiB, temperature C, power W"
        )
        first = [r for r in idle if r["index"] == 0]
        for key, scale in (
            ("utilization", 1),
            ("memory_used", 1 << 20),
            ("temperature", 1),
            ("power", 1),
        ):
            values = [r[key] / scale for r in first if r[key] is not None]
            if values:
                lines.append(f"  {key:<12} min {min(values):.1f}  max {max(values):.1f}")
        lines.append("")
    if result.get("detection"):
        d = result["detection"]
        lines += [
            f"owner detection straight from NVML: {d.get('detected_s', 'never')}s; "
            f"owner pid in NVML's list: {d.get('pid_matches')}",
            "",
        ]
    lines.append(f"preemption, poll interval {result['poll_interval']}s, from the owner's start:")
    lines.append("  trial  paused   executor gone  GPU memory freed  re-queued")
    for t in result["trials"]:
        cells = [t["paused_s"], t["executor_gone_s"], t["gpu_memory_freed_s"], t["requeued_s"]]
        text = ["-" if c is None else f"{c:.3f}s" for c in cells]
        lines.append(f"  {t['trial']:>5}  {text[0]:>7}  {text[1]:>13}  {text[2]:>16}  {text[3]:>9}")
    done = [t["paused_s"] for t in result["trials"] if t["paused_s"] is not None]
    if done:
        lines.append(f"  paused: median {statistics.median(done):.3f}s, max {max(done):.3f}s")
    lines += ["", "isolation: " + "; ".join(f"{k}: {v}" for k, v in result["isolation"].items())]
    return "\n".join(lines)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--simulate", action="store_true", help="no GPU: play the owner through a file"
    )
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--poll", type=float, default=0.25, help="the worker's poll interval")
    parser.add_argument("--owner-mib", type=int, default=4096, help="GPU memory the owner takes")
    parser.add_argument("--samples", type=int, default=20, help="idle NVML readings")
    args = parser.parse_args()
    idle, devices = ([], "simulated") if args.simulate else readings(args.samples, 0.25)
    if not args.simulate and not idle:
        raise SystemExit(f"no NVML readings: {devices}. Run with --simulate to try without a GPU.")
    detection = {} if args.simulate else await detection_latency(args.owner_mib)
    with tempfile.TemporaryDirectory(prefix="sparegrid-probe-") as tmp:
        trials, isolation = await preemption(args, Path(tmp))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    result = {
        "when": stamp,
        "host": platform.node(),
        "mode": "simulated" if args.simulate else "nvml",
        "devices": devices,
        "poll_interval": args.poll,
        "idle_readings": idle,
        "detection": detection,
        "trials": trials,
        "isolation": isolation,
    }
    text = table(result)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    name = f"nvml-probe-{'sim-' if args.simulate else ''}{stamp}"
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2, default=str))
    (RESULTS / f"{name}.txt").write_text(text + "\n")
    print(f"saved bench/results/{name}.json and .txt")


if __name__ == "__main__":
    asyncio.run(main())
