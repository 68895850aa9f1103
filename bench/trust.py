"""Trust benchmark: the verification policies against an adversary, one strategy at a time.

For each strategy (bench/trustsim.py) a fleet of 50 nodes, 20% of them bad, runs jobs
under the adaptive default and under a 2-of-3 quorum, in-process (the coordinator's
services, SQLite, real signatures, a fake clock). Reported per run:

- wrong results accepted (and their share of the accepted tasks);
- false rejections: results of honest nodes outvoted, or honest nodes struck;
- honest overhead: results run per accepted task, over the second half of the run;
- tasks until quarantine: results each bad node returned before it got no more work;
- credit paid to bad nodes, against the credit their results claimed;
- the ledger check.

Then an all-honest fleet after warm-up gives the overhead a trusted network pays.

    python bench/trust.py [--nodes 50] [--tasks 4000] [--honest-tasks 20000] [--seed 1]

Prints a table and saves it (text and JSON) under bench/results/.
"""

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

from trustsim import (
    ECHO_ANSWER,
    STRATEGIES,
    Frames,
    Sim,
    Workload,
    fleet,
    logits,
    render_frames,
    safetensors_bf16,
    seed_of,
)

from sparegrid.coordinator.domain import JobState, Task
from sparegrid.coordinator.services.reputation import TrustConfig
from sparegrid.wire import sha256_hex

RESULTS = Path(__file__).parent / "results"
POLICIES = {"adaptive": (0, 0), "2-of-3": (3, 2)}
JOB_TASKS = 500


FRAMES: list[Frames] = []  # rendered once, on first use


def workload_for(strategy: str | None) -> Workload:
    if strategy == "cheap-tensor":
        return Workload("inference", lambda t: safetensors_bf16(logits(seed_of(t), 64)))
    if strategy == "cheap-render":
        if not FRAMES:
            with tempfile.TemporaryDirectory() as tmp:
                FRAMES.append(render_frames(6, Path(tmp)))
        frames = FRAMES[0]
        workload = Workload("render", lambda t: b"", frames)
        workload.right = lambda t: frames.honest[workload.frame_of(t)][0]
        return workload
    return Workload("echo", lambda t: ECHO_ANSWER)


def right(sim: Sim, task: Task, workload: Workload) -> bool:
    """Whether an accepted task's output is a right answer: one an honest node could have
    returned (for tensors any honest summation order, for frames any honest render),
    never a cheap one."""
    digest = task.outputs[0].digest
    if workload.kind == "echo":
        return digest == sha256_hex(ECHO_ANSWER)
    if workload.kind == "render":
        assert workload.frames is not None
        return digest in {sha256_hex(f) for f in workload.frames.honest[workload.frame_of(task)]}
    honest = {sha256_hex(safetensors_bf16(logits(seed_of(task), c))) for c in (32, 64, 128)}
    return digest in honest


def adversarial(strategy: str, policy: str, nodes: int, tasks: int, seed: int) -> dict[str, object]:
    replicas, quorum = POLICIES[policy]
    workload = workload_for(strategy)
    with tempfile.TemporaryDirectory() as tmp:
        sim = Sim(Path(tmp), fleet(nodes, strategy), seed, TrustConfig())
        started = time.monotonic()
        job_ids = [
            sim.run_job(JOB_TASKS, replicas, quorum, workload)
            for _ in range(max(1, tasks // JOB_TASKS))
        ]
        half = len(job_ids) // 2
        accepted = wrong = late = 0
        for i, job_id in enumerate(job_ids):
            for task in sim.tasks_of(job_id):
                if task.outputs:
                    accepted += 1
                    wrong += not right(sim, task, workload)
                    late += i >= half
        honest = [n for n in sim.nodes if not n.bad]
        bad = [n for n in sim.nodes if n.bad]
        reps = sim.app.reputations
        quarantine = [n.quarantined_after for n in bad if n.quarantined_after is not None]
        failed = sum(
            1
            for j in job_ids
            if (job := sim.app.store.get_job(j)) and job.state != JobState.SUCCEEDED
        )
        return {
            "strategy": strategy,
            "policy": policy,
            "tasks accepted": accepted,
            "wrong accepted": wrong,
            "wrong share": wrong / max(accepted, 1),
            "false rejections": sum(reps.get(n.id).invalid for n in honest),
            "results per task": sim.results / max(accepted, 1),
            "jobs failed": failed,
            "bad nodes quarantined": f"{len(quarantine)} of {len(bad)}",
            "tasks until quarantine (median)": statistics.median(quarantine) if quarantine else "-",
            "credit paid to bad nodes": sum(sim.paid(n) for n in bad),
            "credit their results claimed": sum(n.claimed for n in bad),
            "paid share of claimed": sum(sim.paid(n) for n in bad)
            / max(1, sum(n.claimed for n in bad)),
            "simulated seconds": round(sim.app.clock.now() - 1_000_000.0),
            "ledger balanced": sim.app.ledger.check().balanced,
            "wall seconds": round(time.monotonic() - started, 1),
        }


def honest_overhead(nodes: int, tasks: int, seed: int) -> dict[str, object]:
    """Results per accepted task for an all-honest fleet over the second half of the run."""
    with tempfile.TemporaryDirectory() as tmp:
        sim = Sim(Path(tmp), fleet(nodes, None), seed, TrustConfig())
        workload = workload_for(None)
        jobs = max(2, tasks // JOB_TASKS)
        for _ in range(jobs // 2):
            sim.run_job(JOB_TASKS, 0, 0, workload)
        before = sim.results
        for _ in range(jobs - jobs // 2):
            sim.run_job(JOB_TASKS, 0, 0, workload)
        rates = [sim.app.reputations.check_rate(n.id) for n in sim.nodes]
        return {
            "strategy": "all honest, after warm-up",
            "policy": "adaptive",
            "results per task": (sim.results - before) / ((jobs - jobs // 2) * JOB_TASKS),
            "warm-up tasks": (jobs // 2) * JOB_TASKS,
            "check rate now (mean)": round(sum(rates) / len(rates), 4),
            "false rejections": sum(sim.app.reputations.get(n.id).invalid for n in sim.nodes),
            "ledger balanced": sim.app.ledger.check().balanced,
        }


TABLE = [
    ("strategy", "strategy"),
    ("policy", "policy"),
    ("wrong accepted", "wrong"),
    ("wrong share", "share"),
    ("false rejections", "false rej."),
    ("results per task", "results/task"),
    ("tasks until quarantine (median)", "until quarantine"),
    ("paid share of claimed", "paid/claimed"),
    ("jobs failed", "jobs failed"),
    ("ledger balanced", "balanced"),
]


def table(rows: list[dict[str, object]]) -> str:
    def cell(row: dict[str, object], key: str) -> str:
        value = row.get(key, "-")
        if key in ("wrong share", "paid share of claimed") and isinstance(value, float):
            return f"{value:.3%}"
        if isinstance(value, float):
            return f"{value:.3f}"
        return str(value)

    cells = [[label for _, label in TABLE]] + [[cell(r, k) for k, _ in TABLE] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(TABLE))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in cells
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=50)
    parser.add_argument("--tasks", type=int, default=4000, help="per strategy and policy")
    parser.add_argument("--honest-nodes", type=int, default=10)
    parser.add_argument("--honest-tasks", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--strategy", action="append", choices=STRATEGIES, help="only these")
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # quarantines and slashes are counted, not logged
    started = time.time()
    rows = []
    for strategy in args.strategy or STRATEGIES:
        for policy in POLICIES:
            row = adversarial(strategy, policy, args.nodes, args.tasks, args.seed)
            print(table([row]).splitlines()[-1], flush=True)
            rows.append(row)
    rows.append(honest_overhead(args.honest_nodes, args.honest_tasks, args.seed))
    head = (
        f"trust benchmark: {args.nodes} nodes, 20% bad per strategy, {args.tasks} tasks per "
        f"strategy and policy (jobs of {JOB_TASKS}); honest fleet {args.honest_nodes} nodes, "
        f"{args.honest_tasks} tasks; seed {args.seed}; {time.time() - started:.0f} s"
    )
    text = (
        head
        + "\n\n"
        + table(rows)
        + "\n\nper run:\n"
        + "\n".join(json.dumps(r, default=str) for r in rows)
    )
    print("\n" + text)
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (RESULTS / f"trust-{stamp}.txt").write_text(text + "\n")
    (RESULTS / f"trust-{stamp}.json").write_text(json.dumps(rows, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
