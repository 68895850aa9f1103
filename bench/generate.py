"""Generation benchmark: the network against a local loop, and the fingerprint check.

In one run:
  (a) throughput: the same prompts decoded by transformers' `generate` in a local loop
      (same model, precision, batches and device) and through a real coordinator and one
      worker (`client.generate`); rounds interleaved, medians, tokens/s and their ratio;
  (b) verification overhead: the CPU time of a check (one prefill over prompt and
      completion, fingerprints and argmaxes) over the CPU time of generating the task;
  (c) detection, at the fingerprint level (the worker's executor and the coordinator's
      rules, no network): honest tasks, checked with another thread count (another
      reduction order, as on another device), at fp32 and bf16, greedy and sampled, must
      all be confirmed; cheating results must all be refused: a cheaper model, a lower
      precision than the task's, a truncated completion, an edited token (with the
      fingerprints left as they were, and recomputed by a prefill over the edit).
Saves the table under bench/results/.

    python bench/generate.py                       # tiny models on the CPU
    python bench/generate.py --honest 500 --cheats 100 --device cuda
"""

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sparegrid.cli.procs import Processes, child_env
from sparegrid.coordinator.services import tokencheck
from sparegrid.sdk import AdminClient, Client
from sparegrid.wire.llm import Prompt, check_model, encode_prompts, model_files
from sparegrid.worker.executors.base import DeviceRef, ExecTask
from sparegrid.worker.executors.generate import GenerateExecutor
from tests.generate.models import TEXT, build, train_tokenizer

RESULTS = Path(__file__).parent / "results"


class Runner:
    """A model's tasks run with the worker's executor, in this process."""

    def __init__(self, folder: Path, work: Path, device: str) -> None:
        self.files = {k: v for k, v in model_files(folder).items() if k != "tokenizer"}
        self.info = check_model(model_files(folder))
        self.work = work
        self.device = DeviceRef(0, device, device)
        self.executor = GenerateExecutor()
        self.count = 0

    def run(
        self, prompts: list[Prompt], threads: int, **params: Any
    ) -> tuple[dict[str, bytes], float]:
        self.count += 1
        chunk = self.work / f"p{self.count}.jsonl"
        chunk.write_bytes(encode_prompts(prompts))
        task = {
            "max_tokens": max(p.max_tokens for p in prompts),
            "temperature": 0.0,
            "seed": 0,
            "precision": "fp32",
            "eos": list(self.info.eos),
            "every": 8,
            "k": 32,
            "chunk": 0,
            "lines": [0, len(prompts)],
            "tokens_in": sum(len(p.input_ids) for p in prompts),
            "tokens_out": 0,
            **params,
        }
        torch.set_num_threads(threads)
        start = time.process_time()
        out = self.executor.run(
            ExecTask(
                json.dumps(task).encode(),
                {**self.files, "prompts_000000": chunk},
                self.work,
                self.device,
            )
        )
        return {o.name: o.data for o in out}, time.process_time() - start


def task_params(result_params: dict[str, Any], info: Any) -> dict[str, Any]:
    return {"precision": "fp32", "eos": list(info.eos), "k": 32, **result_params}


def check(
    honest: Runner,
    prompts: list[Prompt],
    result: dict[str, bytes],
    params: dict[str, Any],
    threads: int,
) -> tuple[tokencheck.Found, float]:
    claimed = [c["tokens"] for c in tokencheck.completions(result["completions.json"])]
    out, cpu = honest.run(prompts, threads, claimed=claimed, **params)
    found = json.loads(out["check.json"])
    verdict = tokencheck.confirm(
        task_params(params, honest.info), result, {"params": {"claimed": claimed}, "found": found}
    )
    return verdict, cpu


def make_prompts(tokenizer: Any, rng: random.Random, n: int, max_tokens: int) -> list[Prompt]:
    prompts = []
    for i in range(n):
        words = " ".join(rng.choice(TEXT).split()[: rng.randint(2, 8)])
        prompts.append(Prompt(f"r{i}", tokenizer.encode(words).ids, max_tokens))
    return prompts


def tamper(
    result: dict[str, bytes], how: str, rng: random.Random, vocab: int, eos: int
) -> dict[str, bytes]:
    rows = tokencheck.completions(result["completions.json"])
    prints = json.loads(result["fingerprints.json"])["rows"]
    i = rng.randrange(len(rows))
    tokens = rows[i]["tokens"]
    if how == "truncated":
        cut = max(1, len(tokens) // 2)
        rows[i] = {**rows[i], "tokens": tokens[:cut], "finish_reason": "length"}
        prints[i] = [f for f in prints[i] if f["pos"] < cut]
    elif how == "truncated, ends on EOS":
        cut = max(1, len(tokens) // 2)
        rows[i] = {**rows[i], "tokens": [*tokens[: cut - 1], eos], "finish_reason": "stop"}
        prints[i] = [f for f in prints[i] if f["pos"] < cut]
    else:  # edited: one token replaced
        at = rng.randrange(len(tokens))
        tokens = list(tokens)
        tokens[at] = (tokens[at] + rng.randrange(1, vocab - 1)) % vocab
        rows[i] = {**rows[i], "tokens": tokens}
    return {
        **result,
        "completions.json": json.dumps({"completions": rows}).encode(),
        "fingerprints.json": json.dumps({"rows": prints}).encode(),
    }


def refit(
    cheater: Runner, prompts: list[Prompt], edited: dict[str, bytes], params: dict[str, Any]
) -> dict[str, bytes]:
    """An edit whose fingerprints the cheater recomputed with one prefill of its own."""
    claimed = [c["tokens"] for c in tokencheck.completions(edited["completions.json"])]
    out, _ = cheater.run(prompts, 2, claimed=claimed, **params)
    rows = json.loads(out["check.json"])["rows"]
    prints = []
    for row in rows:
        prints.append(
            [{"pos": f["pos"], "idx": f["idx"][:32], "val": f["val"][:32]} for f in row["fp"]]
        )
    return {**edited, "fingerprints.json": json.dumps({"rows": prints}).encode()}


def detection(args: argparse.Namespace, root: Path, tokenizer: Any) -> dict[str, Any]:
    rng = random.Random(1)
    honest_model = build(root / "honest", tokenizer=tokenizer, seed=0)
    cheap_model = build(root / "cheap", tokenizer=tokenizer, seed=1, layers=1)
    honest = Runner(honest_model, root, args.device)
    cheap = Runner(cheap_model, root, args.device)
    eos = honest.info.eos[0]
    vocab = honest.info.vocab_size
    counts: dict[str, dict[str, Any]] = {}

    def tally(name: str, verdict: tokencheck.Found, want: bool) -> None:
        row = counts.setdefault(name, {"tasks": 0, "wrong": 0, "rules": {}})
        row["tasks"] += 1
        if verdict.agree != want:
            row["wrong"] += 1
        rule = verdict.metrics.get("rule", "")
        row["rules"][rule] = row["rules"].get(rule, 0) + 1
        for key in ("gap", "max_error", "mean_error", "missing"):
            if key in verdict.metrics:
                row[f"worst_{key}"] = max(row.get(f"worst_{key}", 0), verdict.metrics[key])

    for n in range(args.honest):
        if n % 50 == 0:
            print(f"honest task {n}/{args.honest}", file=sys.stderr, flush=True)
        prompts = make_prompts(tokenizer, rng, 4, 16)
        precision = "bf16" if n % 4 == 3 else "fp32"
        sampled = n % 2 == 1
        params = {"precision": precision, "temperature": 0.8 if sampled else 0.0, "seed": n}
        result, _ = honest.run(prompts, 2, **params)
        verdict, _ = check(honest, prompts, result, params, 1)
        tally(f"honest {precision}{' sampled' if sampled else ''}", verdict, True)
    for n in range(args.cheats):
        if n % 10 == 0:
            print(f"cheating task {n}/{args.cheats}", file=sys.stderr, flush=True)
        prompts = make_prompts(tokenizer, rng, 4, 16)
        params = {"precision": "fp32", "temperature": 0.0, "seed": n}
        bad, _ = cheap.run(prompts, 2, **params)
        tally("cheaper model", check(honest, prompts, bad, params, 1)[0], False)
        low, _ = honest.run(prompts, 2, **{**params, "precision": "bf16"})
        tally("lower precision (bf16 for fp32)", check(honest, prompts, low, params, 1)[0], False)
        result, _ = honest.run(prompts, 2, **params)
        for how in ("truncated", "truncated, ends on EOS", "edited"):
            cheated = tamper(result, how, rng, vocab, eos)
            tally(how, check(honest, prompts, cheated, params, 1)[0], False)
        edited = tamper(result, "edited", rng, vocab, eos)
        refitted = refit(honest, prompts, edited, params)
        tally(
            "edited, fingerprints recomputed", check(honest, prompts, refitted, params, 1)[0], False
        )
    return counts


def overhead(args: argparse.Namespace, root: Path, tokenizer: Any) -> dict[str, Any]:
    """Check CPU time over generation CPU time, on a somewhat larger model."""
    model = build(root / "overhead", tokenizer=tokenizer, hidden=256, layers=4, context=1024)
    runner = Runner(model, root, args.device)
    rng = random.Random(2)
    ratios, gens, checks = [], [], []
    for n in range(args.rounds):
        prompts = make_prompts(tokenizer, rng, 8, args.overhead_tokens)
        params = {"seed": n}
        result, gen = runner.run(prompts, 1, **params)
        _, chk = check(runner, prompts, result, params, 1)
        gens.append(gen)
        checks.append(chk)
        ratios.append(chk / gen)
    return {
        "overhead_model": "llama hidden 256, 4 layers, batch 8",
        "overhead_max_tokens": args.overhead_tokens,
        "generate_cpu_s_p50": statistics.median(gens),
        "check_cpu_s_p50": statistics.median(checks),
        "check_over_generate_p50": statistics.median(ratios),
        "check_over_generate_max": max(ratios),
    }


def throughput(args: argparse.Namespace, root: Path, tokenizer: Any) -> dict[str, Any]:
    model = build(root / "tput", tokenizer=tokenizer, hidden=128, layers=2, context=512)
    rng = random.Random(3)
    prompts = make_prompts(tokenizer, rng, args.prompts, args.max_tokens)
    requests = [
        {
            "custom_id": p.custom_id,
            "body": {"prompt": tokenizer.decode(p.input_ids), "max_tokens": args.max_tokens},
        }
        for p in prompts
    ]
    budget = args.batch * (12 + args.max_tokens)
    runner = Runner(model, root, args.device)
    procs = Processes(root, child_env(root))
    local, network = [], []
    try:
        coord = procs.start(
            "coordinator", "coordinator", "serve", "--listen", "127.0.0.1:0",
            "--data-dir", str(root / "coord"), "--log-level", "WARNING",
        )  # fmt: skip
        address = procs.wait_for_file(root / "coord" / "coordinator.addr", coord, 60)
        admin = AdminClient(address, api_key=(root / "coord" / "admin.key").read_text().strip())
        _, key = admin.create_account("bench", credit=10**9)
        _, owner_key = admin.create_account("volunteer", credit=0)
        procs.start(
            "worker", "worker", "run", "--coordinator", address, "--data-dir", str(root / "node"),
            "--name", "bench", *(["--devices", "cpu"] if args.device == "cpu" else []),
            env={"SPAREGRID_OWNER_KEY": owner_key},
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while not any(n.state == "online" for n in admin.nodes()):
            if time.monotonic() > deadline:
                raise RuntimeError("the worker did not come online")
            time.sleep(0.1)
        with Client(address, api_key=key) as client:
            warm = client.generate(model, requests[:2], max_tokens=2, device=args.device)
            list(warm.completions(timeout=600))  # the node loads the model once
            for _ in range(args.rounds):
                local.append(_local(runner, model, requests, prompts, budget, args))
                network.append(_network(client, model, requests, budget, args))
    finally:
        procs.stop_all()
    tokens = [n[1] for n in network]
    return {
        "throughput_model": "llama hidden 128, 2 layers",
        "prompts": args.prompts,
        "max_tokens": args.max_tokens,
        "task_tokens": budget,
        "local_tokens_per_s_p50": statistics.median(t for t, _ in local),
        "network_tokens_per_s_p50": statistics.median(t for t, _ in network),
        "ratio_network_over_local": statistics.median(
            net[0] / loc[0] for net, loc in zip(network, local, strict=True)
        ),
        "same_tokens_generated": len(set(tokens)) == 1 and tokens[0] == local[0][1],
    }


def _local(
    runner: Runner,
    model: Path,
    requests: list[Any],
    prompts: list[Prompt],
    budget: int,
    args: argparse.Namespace,
) -> tuple[float, int]:
    """The same batches decoded here with transformers' generate (the same model object
    the worker builds, loaded once, as a local user would)."""
    from sparegrid.sdk.generate import Tokenizer

    local = Tokenizer(model)
    ids = [local.encode(r["body"]["prompt"]) for r in requests]
    batches: list[list[Prompt]] = [[]]
    used = 0
    for i, p in enumerate(ids):
        cost = len(p) + args.max_tokens
        if batches[-1] and used + cost > budget:
            batches.append([])
            used = 0
        batches[-1].append(Prompt(f"r{i}", p, args.max_tokens))
        used += cost
    loaded = runner.executor.models.get(runner.files, "fp32", torch.device(args.device))
    eos = list(runner.info.eos)
    start = time.perf_counter()
    generated = 0
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    for batch in batches:
        width = max(len(p.input_ids) for p in batch)
        x = torch.full((len(batch), width), eos[0])
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, p in enumerate(batch):
            x[i, width - len(p.input_ids) :] = torch.tensor(p.input_ids)
            mask[i, width - len(p.input_ids) :] = 1
        with torch.inference_mode():
            out = loaded.model.generate(
                input_ids=x.to(args.device), attention_mask=mask.to(args.device),
                max_new_tokens=args.max_tokens, do_sample=False, eos_token_id=eos, pad_token_id=eos[0],
            )  # fmt: skip
        for row in out[:, width:].tolist():
            generated += next((j + 1 for j, t in enumerate(row) if t in eos), len(row))
    return generated / (time.perf_counter() - start), generated


def _network(
    client: Client, model: Path, requests: list[Any], budget: int, args: argparse.Namespace
) -> tuple[float, int]:
    start = time.perf_counter()
    job = client.generate(
        model, requests, max_tokens=args.max_tokens, device=args.device, task_tokens=budget
    )
    generated = sum(len(c.tokens) for c in job.completions(timeout=3600))
    return generated / (time.perf_counter() - start), generated


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--honest", type=int, default=500, help="honest tasks checked")
    parser.add_argument("--cheats", type=int, default=100, help="tasks per cheating strategy")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16, help="prompts per task")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--overhead-tokens", type=int, default=128, help="tokens per prompt")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-network", action="store_true")
    args = parser.parse_args()
    tokenizer = train_tokenizer()
    rows: dict[str, Any] = {
        "device": torch.cuda.get_device_name()
        if args.device == "cuda"
        else platform.processor() or "cpu",
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
    }
    with tempfile.TemporaryDirectory(prefix="sparegrid-bench-") as tmp:
        root = Path(tmp)
        if not args.skip_network:
            print("throughput", file=sys.stderr, flush=True)
            rows.update(throughput(args, root, tokenizer))
        print("verification overhead", file=sys.stderr, flush=True)
        rows.update(overhead(args, root, tokenizer))
        counts = detection(args, root, tokenizer)
    honest = {k: v for k, v in counts.items() if k.startswith("honest")}
    cheats = {k: v for k, v in counts.items() if not k.startswith("honest")}
    rows["honest_tasks"] = sum(v["tasks"] for v in honest.values())
    rows["false_rejections"] = sum(v["wrong"] for v in honest.values())
    for name, v in cheats.items():
        rows[f"detected: {name}"] = f"{v['tasks'] - v['wrong']}/{v['tasks']}"
    rows["detail"] = counts
    report(rows)
    return 0


def report(rows: dict[str, Any]) -> None:
    lines = []
    for k, v in rows.items():
        if k == "detail":
            for name, row in v.items():
                lines.append(f"  {name:34} {json.dumps(row)}")
            continue
        lines.append(f"{k:34} {v:.4g}" if isinstance(v, float) else f"{k:34} {v}")
    text = "\n".join(["sparegrid generate benchmark", *lines])
    print(text)
    RESULTS.mkdir(exist_ok=True)
    name = f"generate-{rows['cpus']}cpu-{time.strftime('%Y%m%d-%H%M%S')}"
    (RESULTS / f"{name}.txt").write_text(text + "\n")
    (RESULTS / f"{name}.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
