"""Inference benchmark: the network path against a plain local loop, on one device.

In one run on the same device:
  (a) local: eager torch over the model, same precision, same batch size, inputs moved
      to the device batch by batch;
  (b) network: the same inputs submitted with `client.infer` to a real coordinator and
      one worker on that device (export and first upload are not timed; the timed job
      re-sends identical shards, which the coordinator already holds).
Prints throughput of both and their ratio, first-result latency for a cold worker (model
not loaded) and a warm one, and the device's idle gap between consecutive shards (from
the workers' signed timings). Saves the table under bench/results/.

    python bench/inference.py                          # small encoder, CPU, fp32
    python bench/inference.py --model vit-b16 --device cuda --precision bf16 --batches 256
"""

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import itertools

from sparegrid.cli.procs import Processes, child_env
from sparegrid.sdk import AdminClient, Client
from sparegrid.sdk.inference import export_program
from tests.inference.models import Encoder

RESULTS = Path(__file__).parent / "results"
MODELS = {
    # ViT-B/16: 12 blocks, d=768, 197 tokens (facts.md: 5.59 ms per bf16 batch of 64 on H200)
    "vit-b16": {"dim": 768, "depth": 12, "heads": 12, "image": 224, "patch": 16},
    "small": {"dim": 192, "depth": 4, "heads": 3, "image": 64, "patch": 16},
}
DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16}


def local_loop(model: Any, x: torch.Tensor, args: argparse.Namespace) -> float:
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = args.precision == "tf32"
    model = model.to(device, DTYPES[args.precision])
    batches = list(x.split(args.batch_size))
    if device.type == "cuda":
        batches = [b.pin_memory() for b in batches]
    with torch.inference_mode():
        for b in batches[:3]:
            model(b.to(device, DTYPES[args.precision]))
        sync(device)
        start = time.perf_counter()
        for b in batches:
            model(b.to(device, DTYPES[args.precision], non_blocking=True)).to("cpu")
        sync(device)
    return x.shape[0] / (time.perf_counter() - start)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def network_run(
    client: Client, program: Path, x: torch.Tensor, args: argparse.Namespace
) -> dict[str, Any]:
    start = time.perf_counter()
    job = client.infer(
        program,
        x,
        batch_size=args.batch_size,
        precision=args.precision,
        shard_batches=args.shard_batches,
        device=args.device,
        compile=args.compile,
    )
    submitted = time.perf_counter()
    first = None
    metas = []
    for shard in job.shards(timeout=3600):
        first = first or time.perf_counter()
        metas.append(shard.meta)
    done = time.perf_counter()
    return {
        "samples_per_s": x.shape[0] / (done - start),
        "submit_s": submitted - start,
        "first_result_s": (first or done) - start,
        "gaps_ms": idle_gaps(metas),
        "node_load_ms": metas[0]["timing"]["load_ms"] if metas else None,
        "verified": job.verify().passed,
    }


def idle_gaps(metas: list[dict[str, Any]]) -> list[float]:
    spans = sorted((m["timing"]["start_ns"], m["timing"]["end_ns"]) for m in metas)
    return [(b[0] - a[1]) / 1e6 for a, b in itertools.pairwise(spans)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=MODELS, default="small")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--precision", choices=DTYPES, default="fp32")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=32)
    parser.add_argument("--shard-batches", type=int, default=8)
    parser.add_argument("--compile", action="store_true", help="workers compile the program")
    args = parser.parse_args()
    torch.manual_seed(0)
    spec = MODELS[args.model]
    model = Encoder(**spec).eval()
    x = torch.randn(args.batches * args.batch_size, 3, spec["image"], spec["image"])
    local = local_loop(model, x, args)
    with tempfile.TemporaryDirectory(prefix="sparegrid-bench-") as tmp:
        root = Path(tmp)
        program = export_program(
            model.to("cpu", torch.float32), (x[: args.batch_size],), root / "model.pt2"
        )
        procs = Processes(root, child_env(root))
        try:
            coord = procs.start(
                "coordinator",
                "coordinator",
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
                str(root / "coord"),
                "--log-level",
                "WARNING",
            )
            address = procs.wait_for_file(root / "coord" / "coordinator.addr", coord, 60)
            admin_key = (root / "coord" / "admin.key").read_text().strip()
            admin = AdminClient(address, api_key=admin_key)
            _, key = admin.create_account("bench", credit=10**9)
            _, owner_key = admin.create_account("volunteer", credit=0)
            procs.start(
                "worker",
                "worker",
                "run",
                "--coordinator",
                address,
                "--data-dir",
                str(root / "node"),
                "--name",
                "bench",
                *(("--devices", "cpu") if args.device == "cpu" else ()),
                env={"SPAREGRID_OWNER_KEY": owner_key},
            )
            deadline = time.monotonic() + 60
            while not any(n.state == "online" for n in admin.nodes()):
                if time.monotonic() > deadline:
                    raise RuntimeError("the worker did not come online")
                time.sleep(0.1)
            with Client(address, api_key=key) as client:
                cold = network_run(client, program, x[: args.batch_size], args)
                network_run(client, program, x, args)  # uploads the shards once
                warm = network_run(client, program, x, args)
        finally:
            procs.stop_all()
    rows = {
        "model": args.model,
        "device": torch.cuda.get_device_name()
        if args.device == "cuda"
        else platform.processor() or "cpu",
        "precision": args.precision,
        "batch_size": args.batch_size,
        "samples": x.shape[0],
        "shard_batches": args.shard_batches,
        "compile": args.compile,
        "local_samples_per_s": local,
        "network_samples_per_s": warm["samples_per_s"],
        "ratio": warm["samples_per_s"] / local,
        "first_result_cold_s": cold["first_result_s"],
        "first_result_warm_s": warm["first_result_s"],
        "client_prepare_warm_s": warm["submit_s"],
        "cold_model_load_ms": cold["node_load_ms"],
        "idle_gap_ms_p50": statistics.median(warm["gaps_ms"]) if warm["gaps_ms"] else None,
        "idle_gap_ms_max": max(warm["gaps_ms"]) if warm["gaps_ms"] else None,
        "receipts_verified": warm["verified"] and cold["verified"],
        "torch": torch.__version__,
        "cpus": __import__("os").cpu_count(),
    }
    report(rows)
    return 0


def report(rows: dict[str, Any]) -> None:
    lines = [f"{k:24} {v:.4g}" if isinstance(v, float) else f"{k:24} {v}" for k, v in rows.items()]
    text = "\n".join(["sparegrid inference benchmark", *lines])
    print(text)
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = f"inference-{rows['model']}-{rows['precision']}-{stamp}"
    (RESULTS / f"{name}.txt").write_text(text + "\n")
    (RESULTS / f"{name}.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
