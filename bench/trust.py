"""Trust benchmark: how the verification policies fare against a fleet with bad nodes.

Drives the coordinator's services in-process (SQLite store in a temp dir, a fake clock,
real Ed25519 signatures) with simulated nodes that answer echo tasks, some of them badly:

    wrong    always wrong (random junk)        flaky    wrong 5% of the time
    lazy     returns an empty output           cartel   a colluding pair under one owner
    forger   signs its batches with another key  claimer  also claims tasks never leased to it

and reports, per policy: the share of accepted results that are wrong, how many of its
tasks each bad node ran before quarantine, false rejections of honest results, and, for
an honest fleet after warm-up, the compute spent per accepted result (1.00 = no checks).

    python bench/trust.py [--nodes 50] [--tasks 10000] [--honest-tasks 20000] [--seed 1]

Prints a table and saves it under bench/results/.
"""

import argparse
import json
import logging
import os
import random
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from sparegrid.coordinator.app import App, Settings
from sparegrid.coordinator.clock import FakeClock
from sparegrid.coordinator.domain import Attempt, Device, JobState, Node, Task
from sparegrid.coordinator.services.jobs import JobSpec
from sparegrid.coordinator.services.reputation import TrustConfig
from sparegrid.coordinator.store.sqlite import SqliteStore
from sparegrid.v1 import common_pb2
from sparegrid.wire import Signer, sha256_hex
from sparegrid.wire.receipt import sign_batch

RESULTS = Path(__file__).parent / "results"
BAD_MIX = ["wrong", "wrong", "flaky", "flaky", "lazy", "lazy", "cartel", "cartel", "forger",
           "claimer"]  # fmt: skip
CORRECT = b"the right answer"


@dataclass
class SimNode:
    name: str
    behaviour: str
    owner: str
    signer: Signer = field(default_factory=Signer.generate)
    assigned: list[tuple[Attempt, Task, str]] = field(default_factory=list)
    ran: int = 0
    quarantined_after: int | None = None

    @property
    def id(self) -> str:
        return self.signer.node_id

    def assign(self, items: list[tuple[Attempt, Task, str]]) -> None:
        self.assigned.extend(items)

    def cancel(self, attempt_ids: list[str], reason: str) -> None:
        drop = set(attempt_ids)
        self.assigned = [i for i in self.assigned if i[0].id not in drop]

    def close(self) -> None:
        pass

    def output(self, task: Task, rng: random.Random) -> bytes:
        b = self.behaviour
        if b == "wrong" or (b == "flaky" and rng.random() < 0.05):
            return os.urandom(8).hex().encode()
        if b == "lazy":
            return b""
        if b == "cartel":
            return b"agreed junk " + task.id.encode()
        return CORRECT


def statement(node: SimNode, attempt: Attempt, task: Task, out: bytes) -> bytes:
    return common_pb2.ResultStatement(
        job_id=task.job_id, task_id=task.id, attempt_id=attempt.id, node_id=node.id,
        outputs=[common_pb2.OutputRef(name="out", digest=sha256_hex(out), size=len(out))],
        executor="echo", executor_version="1",
    ).SerializeToString()  # fmt: skip


class Sim:
    def __init__(self, root: Path, nodes: list[SimNode], seed: int) -> None:
        store = SqliteStore(root / "bench.db", synchronous="NORMAL")
        settings = Settings(data_dir=root, trust=TrustConfig())
        self.app = App(store, settings, clock=FakeClock())
        self.app.reputations._rng = random.Random(seed)
        self.app.start_services()
        self.rng = random.Random(seed + 1)
        self.nodes = nodes
        self.account, _ = self.app.accounts.create("client", 10**12)
        for node in nodes:
            n = Node(node.id, node.signer.public_key, node.name,
                     [Device(0, "cpu", "sim")], executors={"echo": "1"}, owner=node.owner)  # fmt: skip
            self.app.store.upsert_node(n)
            self.app.scheduler.connect(n, node, [])
        self.results = 0  # results nodes returned
        self.honest_results = 0

    def run_job(self, tasks: int, replicas: int, quorum: int) -> str:
        app = self.app
        params = json.dumps({"tasks": tasks, "data": CORRECT.decode()}).encode()
        spec = JobSpec("echo", params=params, replicas=replicas, quorum=quorum, max_attempts=10)
        job = app.jobs.submit(self.account, spec)
        while job.id in app.scheduler.jobs:
            self.round()
        return job.id

    def round(self) -> None:
        app, sched = self.app, self.app.scheduler
        order = list(self.nodes)
        self.rng.shuffle(order)
        for node in order:
            if node.id in sched.sessions and not node.assigned:
                sched.grant(node.id, 0, 1)
        sched.dispatch()
        leased = [i for n in self.nodes for i in n.assigned]
        for node in order:
            items, node.assigned = node.assigned, []
            if not items:
                continue
            node.ran += len(items)
            self.results += len(items)
            outs = [node.output(task, self.rng) for _, task, _ in items]
            if node.behaviour == "honest":
                self.honest_results += len(items)
            statements = [
                statement(node, a, t, o) for (a, t, _), o in zip(items, outs, strict=True)
            ]
            if node.behaviour == "claimer":
                others = [i for i in leased if i[0].node_id != node.id]
                if others:
                    a, t, _ = self.rng.choice(others)
                    forged = Attempt(a.id, a.task_id, a.job_id, node.id, 0, a.deadline)
                    statements.append(statement(node, forged, t, CORRECT))
            key = Signer.generate() if node.behaviour == "forger" else node.signer
            inline = {sha256_hex(o): o for o in outs} | {sha256_hex(CORRECT): CORRECT}
            with app.store.transaction():
                app.intake.results(node.id, statements, sign_batch(key, statements), inline)
            for other in self.nodes:  # a result of one node can outvote another's
                if other.quarantined_after is None and app.reputations.blocked(other.id):
                    other.quarantined_after = other.ran
        app.clock.advance(1.0)  # type: ignore[attr-defined]
        with app.store.transaction():
            sched.reap()

    def tasks_of(self, job_id: str) -> list[Task]:
        out: list[Task] = []
        while True:
            page = self.app.store.list_tasks(job_id, out[-1].index if out else -1, 1000)
            if not page:
                return out
            out += page


def fleet(count: int, bad: int) -> list[SimNode]:
    nodes = [SimNode(f"h{i}", "honest", f"owner-h{i}") for i in range(count - bad)]
    for i in range(bad):
        behaviour = BAD_MIX[i % len(BAD_MIX)]
        owner = "cartel" if behaviour == "cartel" else f"owner-b{i}"
        nodes.append(SimNode(f"b{i}-{behaviour}", behaviour, owner))
    return nodes


def adversarial(policy: str, nodes: int, tasks: int, seed: int) -> dict[str, object]:
    replicas, quorum = {"adaptive": (0, 0), "2-of-3": (3, 2), "2-of-2": (2, 2)}[policy]
    with tempfile.TemporaryDirectory() as tmp:
        sim = Sim(Path(tmp), fleet(nodes, nodes // 5), seed)
        accepted = wrong = 0
        job_ids = [sim.run_job(500, replicas, quorum) for _ in range(max(1, tasks // 500))]
        for job_id in job_ids:
            for task in sim.tasks_of(job_id):
                if task.outputs:
                    accepted += 1
                    wrong += task.outputs[0].digest != sha256_hex(CORRECT)
        honest_invalid = sum(
            sim.app.reputations.get(n.id).invalid for n in sim.nodes if n.behaviour == "honest"
        )
        bad = [n for n in sim.nodes if n.behaviour != "honest"]
        quarantined = {
            n.name: n.quarantined_after if n.quarantined_after is not None else f"no ({n.ran} run)"
            for n in bad
        }
        failed = sum(
            1
            for j in job_ids
            if (job := sim.app.store.get_job(j)) and job.state != JobState.SUCCEEDED
        )
        report = sim.app.ledger.check()
        return {
            "policy": policy,
            "tasks accepted": accepted,
            "wrong accepted": wrong,
            "wrong share": wrong / max(accepted, 1),
            "honest results rejected": honest_invalid,
            "results per accepted task": sim.results / max(accepted, 1),
            "jobs failed": failed,
            "ledger balanced": report.balanced,
            "tasks before quarantine": quarantined,
        }


def honest_overhead(nodes: int, tasks: int, seed: int) -> dict[str, object]:
    """Results per accepted task for an all-honest fleet, over the second half of the run."""
    with tempfile.TemporaryDirectory() as tmp:
        sim = Sim(Path(tmp), fleet(nodes, 0), seed)
        half = max(1, tasks // 2 // 500)
        for _ in range(half):
            sim.run_job(500, 0, 0)
        before = sim.results
        for _ in range(half):
            sim.run_job(500, 0, 0)
        rates = [sim.app.reputations.check_rate(n.id) for n in sim.nodes]
        return {
            "policy": "adaptive, honest fleet after warm-up",
            "results per accepted task": (sim.results - before) / (half * 500),
            "warm-up tasks": half * 500,
            "check rate now (mean)": sum(rates) / len(rates),
            "honest results rejected": sum(
                sim.app.reputations.get(n.id).invalid for n in sim.nodes
            ),
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=50)
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--honest-nodes", type=int, default=10)
    parser.add_argument("--honest-tasks", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # quarantines are counted, not logged
    started = time.time()
    rows = [
        adversarial(p, args.nodes, args.tasks, args.seed) for p in ("2-of-2", "2-of-3", "adaptive")
    ]
    rows.append(honest_overhead(args.honest_nodes, args.honest_tasks, args.seed))
    lines = [f"trust benchmark: {args.nodes} nodes, 20% bad ({', '.join(sorted(Counter(BAD_MIX)))}),"
             f" {args.tasks} tasks per policy; seed {args.seed}; {time.time() - started:.0f} s"]  # fmt: skip
    for row in rows:
        lines.append("")
        lines += [
            f"  {k:28} {v:.4%}" if k == "wrong share" else f"  {k:28} {v}" for k, v in row.items()
        ]
    text = "\n".join(lines)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (RESULTS / f"trust-{stamp}.txt").write_text(text + "\n")
    (RESULTS / f"trust-{stamp}.json").write_text(json.dumps(rows, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
