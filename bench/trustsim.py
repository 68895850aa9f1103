"""The simulation behind bench/trust.py: the coordinator's services in-process (SQLite in a
temp dir, real Ed25519 signatures, a fake clock) and simulated nodes, some of them bad.

Each node answers the tasks it is leased after one simulated second. The answers:

    honest        the right answer (for tensors: computed in bf16, as a GPU would, with a
                  summation order of its own, so two honest answers differ in low bits)
    sybil         a fresh key with no owner account; all of them agree on one wrong answer
    one-owner     nodes of one owner account, all agreeing on one wrong answer
    hoarder       16 fake GPUs, 1000 credit each, never answers, only sends heartbeats
    cheap-tensor  a tensor made with a fraction of the work: all rows zeroed but the
                  largest, each row's top two swapped, or half the model (two cheaters
                  using one trick return the same bytes, and agree)
    free-rider    names the right answer's digest without the bytes (as if copied from a
                  receipt), so it never ran the task
    turncoat      answered honestly for long enough to be trusted (check rate at the
                  floor), then wrong every time (each its own wrong answer)
    cheap-render  a frame rendered with a fraction of the work (half resolution and 4
                  samples denoised and upscaled, a quarter of the samples, the honest frame
                  blurred; again two cheaters using one trick agree); honest nodes return
                  real Cycles renders of the frame that differ as two machines' would (a
                  rerun, one thread, the camera moved by 1e-4)
    colluders     owner accounts (20% of them) agreeing on one wrong answer: what no
                  replication can catch, shown for what it costs them

Bad nodes of one strategy are 20% of the fleet; honest nodes each prove an owner account.
"""

import json
import random
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sparegrid.coordinator.app import App
from sparegrid.coordinator.clock import FakeClock
from sparegrid.coordinator.domain import (
    Attempt,
    Device,
    Job,
    Node,
    Requirements,
    Task,
    client_account,
    node_account,
)
from sparegrid.coordinator.services.jobs import JobSpec
from sparegrid.coordinator.services.reputation import TrustConfig
from sparegrid.coordinator.services.spotcheck import SpotConfig
from sparegrid.coordinator.settings import Settings
from sparegrid.coordinator.store.sqlite import SqliteStore
from sparegrid.v1 import common_pb2
from sparegrid.wire import Signer, sha256_hex
from sparegrid.wire.receipt import sign_batch

ECHO_ANSWER = b"the right answer"
STRATEGIES = (
    "sybil",
    "one-owner",
    "hoarder",
    "cheap-tensor",
    "free-rider",
    "turncoat",
    "cheap-render",
    "colluders",
)


@dataclass
class SimNode:
    name: str
    behaviour: str
    owner: str  # "" for a node without an owner account
    devices: int = 1
    signer: Signer = field(default_factory=Signer.generate)
    assigned: list[tuple[Attempt, Task, str]] = field(default_factory=list)
    ran: int = 0  # results it returned
    claimed: int = 0  # credit its results would have earned, had they all been accepted
    quarantined_after: int | None = None

    @property
    def id(self) -> str:
        return self.signer.node_id

    @property
    def bad(self) -> bool:
        return self.behaviour != "honest"

    # the session's way down (scheduler.SessionSink)
    def assign(self, items: list[tuple[Attempt, Task, str]]) -> None:
        self.assigned.extend(items)

    def cancel(self, attempt_ids: list[str], reason: str) -> None:
        drop = set(attempt_ids)
        self.assigned = [i for i in self.assigned if i[0].id not in drop]

    def credited(self, total: int) -> None:
        pass

    def close(self) -> None:
        pass


# --- tensors: a small classifier's logits, as honest and cheap nodes compute them -----------

ROWS, DEPTH, CLASSES = 16, 256, 10


def _bf16(x: np.ndarray) -> np.ndarray:
    """Rounds float32 values to bfloat16 (nearest even), kept as float32."""
    bits = x.astype(np.float32).view(np.uint32)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return rounded.astype(np.uint32).view(np.float32)


def logits(task_index: int, chunk: int, depth: int = DEPTH) -> np.ndarray:
    """The task's logits computed in bf16 with a float32 sum over chunks of `chunk`."""
    rng = np.random.default_rng(task_index)
    x = _bf16(rng.standard_normal((ROWS, DEPTH), dtype=np.float32))
    w = _bf16(rng.standard_normal((DEPTH, CLASSES), dtype=np.float32) / 8)
    out = np.zeros((ROWS, CLASSES), dtype=np.float32)
    for start in range(0, depth, chunk):
        out += x[:, start : start + chunk] @ w[start : start + chunk]
    return _bf16(out)


def cheap_logits(task_index: int, how: int, who: int = 0) -> np.ndarray:
    """Logits made cheaply: `how` picks the trick, `who` (the cheating node) its variant."""
    out = logits(task_index, 64)
    if how == 0:  # one row kept (the largest, or another), the rest zeroed
        keep = (int(np.argmax(np.abs(out).max(axis=1))) + who) % ROWS
        zeroed = np.zeros_like(out)
        zeroed[keep] = out[keep]
        return zeroed
    if how == 1:  # each row's two best classes swapped, and a little noise
        top = np.argsort(out, axis=1)[:, -2:]
        swapped = out.copy()
        rows = np.arange(ROWS)
        swapped[rows, top[:, 0]], swapped[rows, top[:, 1]] = (
            out[rows, top[:, 1]],
            out[rows, top[:, 0]],
        )
        noise = np.random.default_rng(who).standard_normal(out.shape, dtype=np.float32)
        return _bf16(swapped + 0.01 * noise * np.abs(out).max())
    return logits(task_index, 64, depth=DEPTH // 2 + 8 * (who % 8))  # part of the model


def safetensors_bf16(array: np.ndarray) -> bytes:
    """A safetensors file of one BF16 tensor "logits" (numpy has no bfloat16)."""
    raw = (array.astype(np.float32).view(np.uint32) >> 16).astype("<u2").tobytes()
    header = json.dumps(
        {"logits": {"dtype": "BF16", "shape": list(array.shape), "data_offsets": [0, len(raw)]}}
    ).encode()
    header += b" " * (-len(header) % 8)
    return struct.pack("<Q", len(header)) + header + raw


# --- frames: real Cycles renders, honest and cheap ----------------------------------------

FRAME_SIZE = (192, 108)


@dataclass
class Frames:
    """PNG bytes per frame number: what honest nodes return, and what cheap ones do."""

    honest: dict[int, list[bytes]]
    cheap: dict[int, list[bytes]]


def render_frames(count: int, work: Path) -> Frames:
    """Renders Blender's default scene (denoiser on, dither 1) as workers do, on the CPU,
    with the frames bench's renderer (bench/frames.py)."""
    import io

    import bpy
    from frames import Renderer, _camera, _png, _threads, build_scenes, with_state
    from PIL import Image, ImageFilter

    from sparegrid.worker.executors.render import blender

    blender.load_bpy(work / "home")
    scenes = build_scenes(bpy, work)
    r = Renderer(bpy, scenes["cube denoised dither1"], work, FRAME_SIZE, 32)

    def png(image: np.ndarray) -> bytes:
        return _png(Image.fromarray(np.round(image * 255).astype(np.uint8)))

    honest: dict[int, list[bytes]] = {}
    cheap: dict[int, list[bytes]] = {}
    for frame in range(1, count + 1):
        whole = r.render(frame=frame)
        honest[frame] = [
            png(whole),
            png(with_state(_threads, r, frame=frame)),
            png(with_state(_camera(1e-4), r, frame=frame)),
        ]
        blurred = Image.open(io.BytesIO(png(whole))).filter(ImageFilter.GaussianBlur(1))
        with_denoise = r.opened.denoise
        r.opened.denoise = True
        cheap[frame] = [
            png(r.render(frame=frame, samples=4, scale=2)),
            png(r.render(frame=frame, samples=8)),
            _png(blurred),
        ]
        r.opened.denoise = with_denoise
    return Frames(honest, cheap)


# --- the simulation ----------------------------------------------------------------------


@dataclass
class Workload:
    kind: str  # "echo", "inference" or "render"
    right: Callable[[Task], bytes]  # the right answer to a task
    frames: Frames | None = None

    @property
    def output(self) -> str:
        """The name of a task's one output."""
        return {"inference": "outputs.safetensors", "render": "frame.png"}.get(self.kind, "out")

    def frame_of(self, task: Task) -> int:
        """A render task's frame: from its params, as a known-answer copy keeps them."""
        frames: list[int] = json.loads(task.params)["frames"]
        return frames[0]

    def answer(self, node: SimNode, task: Task, rng: random.Random) -> bytes:
        index = seed_of(task)
        who = int(node.name.lstrip("hb"))
        if self.kind == "render":
            assert self.frames is not None
            frame = self.frame_of(task)
            if node.behaviour == "cheap-render":
                return rng.choice(self.frames.cheap[frame])
            if node.bad:
                return self.frames.cheap[frame][(who + frame) % 3]
            return self.frames.honest[frame][who % 3]
        if self.kind == "echo":
            if node.behaviour in ("sybil", "one-owner", "colluders"):
                return b"agreed junk " + task.id.encode()
            if node.behaviour == "turncoat":
                return f"{node.name}'s junk {task.id}".encode()
            return ECHO_ANSWER
        if node.behaviour == "cheap-tensor":  # cheaters using one trick agree, as in life
            return safetensors_bf16(cheap_logits(index, rng.randrange(3)))
        if node.behaviour in ("sybil", "one-owner", "colluders"):
            return safetensors_bf16(cheap_logits(index, 2))
        if node.behaviour == "turncoat":
            return safetensors_bf16(cheap_logits(index, 2, who))
        chunk = 32 << (who % 3)  # honest nodes differ in the order they sum in
        return safetensors_bf16(logits(index, chunk))


class Sim:
    def __init__(self, root: Path, nodes: list[SimNode], seed: int, trust: TrustConfig) -> None:
        store = SqliteStore(root / "bench.db", synchronous="NORMAL")
        settings = Settings(data_dir=root, trust=trust, spot_checks=SpotConfig(share=0.0))
        self.app = App(store, settings, clock=FakeClock())
        self.app.reputations._rng = random.Random(seed)
        self.app.intake.settlement.vouching.rng = random.Random(seed + 2)
        self.app.canaries.rng = random.Random(seed + 3)
        self.app.start_services()
        self.rng = random.Random(seed + 1)
        self.nodes = nodes
        self.client, _ = self.app.accounts.create("client", 10**12)
        for node in nodes:
            if node.owner and self.app.store.get_account_by_name(node.owner) is None:
                self.app.accounts.create(node.owner, 0)
            devices = [Device(i, "cuda", "sim", memory_bytes=80 << 30) for i in range(node.devices)]
            n = Node(
                node.id,
                node.signer.public_key,
                node.name,
                devices,
                executors={"echo": "1", "inference": "1", "render": "1"},
                owner=node.owner,
            )
            n.last_seen = self.app.clock.now()
            self.app.store.upsert_node(n)
            self.app.scheduler.connect(n, node, [])
            if node.behaviour == "turncoat":  # a long honest record: checked at the floor
                self.app.reputations.validated([node.id] * 1000)
        self.results = 0  # results returned by any node
        self.honest_results = 0

    def run_job(self, tasks: int, replicas: int, quorum: int, workload: Workload) -> str:
        app = self.app
        if workload.kind == "echo":
            params = json.dumps({"tasks": tasks, "data": ECHO_ANSWER.decode()}).encode()
            spec = JobSpec("echo", params=params, replicas=replicas, quorum=quorum, max_attempts=10)
            with app.store.transaction():
                job = app.jobs.submit(self.client, spec)
        else:
            job = self._simulated_job(workload, tasks, replicas, quorum)
        for _ in range(100 * tasks):
            if job.id not in app.scheduler.jobs:
                return job.id
            self.round(workload)
        waiting = app.scheduler.waiting(app.scheduler.jobs[job.id])
        raise RuntimeError(f"job {job.id} did not finish: {waiting or 'no reason given'}")

    def _simulated_job(self, workload: Workload, tasks: int, replicas: int, quorum: int) -> Job:
        """An inference or render job whose tasks need no model or scene blob: the nodes
        are simulated. Render jobs are checked by whole frames (no spot checks: a crop
        would need a render of its own)."""
        app, job_id = self.app, f"{workload.kind}-{self.rng.getrandbits(64):016x}"
        job = Job(
            job_id,
            self.client.id,
            workload.kind,
            "",
            b"{}",
            {},
            Requirements(),
            10,
            1,
            1,
            tasks,
            replicas=replicas,
            quorum=quorum,
            created_at=app.clock.now(),
        )

        def params(i: int) -> bytes:
            if workload.kind == "render":
                assert workload.frames is not None
                frame = i % len(workload.frames.honest) + 1
                return json.dumps(
                    {"frames": [frame], "resolution": list(FRAME_SIZE), "format": "png"}
                ).encode()
            return json.dumps({"precision": "bf16", "seed": i}).encode()

        rows = [Task(f"{job_id}-{i}", job_id, i, params(i), [], work=1) for i in range(tasks)]
        job.cost_held = tasks * job.max_paid_results
        with app.store.transaction():
            app.store.create_job(job, rows)
            app.ledger.hold(job, "client")
        app.scheduler.add_job(job, "client", rows)
        return job

    def round(self, workload: Workload) -> None:
        app, sched = self.app, self.app.scheduler
        order = list(self.nodes)
        self.rng.shuffle(order)
        with app.store.transaction():
            for node in order:
                if node.id not in sched.sessions:
                    continue
                if node.behaviour == "hoarder":
                    for device in range(node.devices):
                        sched.grant(node.id, device, 1000, reset=True)
                elif not node.assigned:
                    sched.grant(node.id, 0, 1, reset=True)
            sched.dispatch()
        for node in order:
            self._answer(node, workload)
        queued = any(a.queue for a in sched.jobs.values())
        busy = queued or any(n.assigned for n in self.nodes if n.behaviour != "hoarder")
        # nothing for anyone to do: the next thing that happens is a lease running out
        step = 1.0 if busy or not self._hoarding() else max(1.0, self._next_deadline() - 0.5)
        app.clock.advance(step)  # type: ignore[attr-defined]
        with app.store.transaction():
            for node in self.nodes:
                if node.behaviour == "hoarder" and node.id in sched.sessions:
                    sched.heartbeat(node.id)
            sched.reap()
            app.intake.settle_stranded()
            sched.dispatch()

    def _hoarding(self) -> bool:
        return any(n.assigned for n in self.nodes if n.behaviour == "hoarder")

    def _next_deadline(self) -> float:
        now = self.app.clock.now()
        deadlines = [a.deadline for n in self.nodes for a, _, _ in n.assigned]
        return min(deadlines, default=now + 1) - now

    def _answer(self, node: SimNode, workload: Workload) -> None:
        app = self.app
        if node.behaviour == "hoarder" or not node.assigned:
            return
        items, node.assigned = node.assigned, []
        node.ran += len(items)
        self.results += len(items)
        if not node.bad:
            self.honest_results += len(items)
        outs = [workload.answer(node, task, self.rng) for _, task, _ in items]
        node.claimed += sum(
            app.scheduler.jobs[t.job_id].job.task_cost(t.work)
            for _, t, _ in items
            if t.job_id in app.scheduler.jobs
        )
        statements, inline = [], {}
        for (attempt, task, _), out in zip(items, outs, strict=True):
            if node.behaviour == "free-rider":  # the right digest, no bytes behind it
                out = workload.right(task)
            else:
                inline[sha256_hex(out)] = out
            statements.append(statement(node, attempt, task, out, workload.output))
        with app.store.transaction():
            app.intake.results(node.id, statements, sign_batch(node.signer, statements), inline)
        for other in self.nodes:
            if other.quarantined_after is None and app.reputations.blocked(other.id):
                other.quarantined_after = other.ran

    def tasks_of(self, job_id: str) -> list[Task]:
        out: list[Task] = []
        while page := self.app.store.list_tasks(job_id, out[-1].index if out else -1, 1000):
            out += page
        return out

    def paid(self, node: SimNode) -> int:
        return self.app.store.balance(node_account(node.id))

    def client_balance(self) -> int:
        return self.app.store.balance(client_account("client"))


def seed_of(task: Task) -> int:
    """A tensor task's inputs: from its params, as a known-answer copy keeps them."""
    seed: int = json.loads(task.params or b"{}").get("seed", task.index)
    return seed


def statement(node: SimNode, attempt: Attempt, task: Task, out: bytes, name: str) -> bytes:
    return common_pb2.ResultStatement(
        job_id=task.job_id,
        task_id=task.id,
        attempt_id=attempt.id,
        node_id=node.id,
        outputs=[common_pb2.OutputRef(name=name, digest=sha256_hex(out), size=len(out))],
        executor="sim",
        executor_version="1",
    ).SerializeToString()


def fleet(count: int, strategy: str | None) -> list[SimNode]:
    """`count` nodes, 20% of them of `strategy` (none bad when it is None)."""
    bad = count // 5 if strategy else 0
    nodes = [SimNode(f"h{i}", "honest", f"owner-h{i}") for i in range(count - bad)]
    for i in range(bad):
        assert strategy is not None
        owner = {"sybil": "", "one-owner": "mallory"}.get(strategy, f"owner-b{i}")
        devices = 16 if strategy == "hoarder" else 1
        nodes.append(SimNode(f"b{i}", strategy, owner, devices=devices))
    return nodes
