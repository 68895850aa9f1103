"""Render spot checks on the in-memory coordinator: a scene, honest (or wrong) frames, and a node that answers what it is given."""

import json
import random
from pathlib import Path

import numpy as np

from sparegrid.coordinator.app import App
from sparegrid.coordinator.domain import Attempt, Task
from sparegrid.coordinator.services.jobs import JobSpec
from sparegrid.coordinator.services.prices import Price
from sparegrid.coordinator.services.reputation import TrustConfig
from sparegrid.coordinator.services.results import Verdict
from sparegrid.v1 import common_pb2
from sparegrid.wire import sha256_hex
from sparegrid.wire.receipt import sign_batch
from sparegrid.wire.render import output_name
from tests.coordinator.helpers import FakeNode, make_app, make_client, png

WIDTH, HEIGHT, SAMPLES = 64, 48, 10


# a Blender 4.2 style .blend: header, one block, ENDB (enough for the coordinator's check)
SCENE = b"BLENDER-v402REND" + (4).to_bytes(4, "little") + bytes(16) + b"abcd" + b"ENDB" + bytes(20)


def frame_image(frame: int) -> np.ndarray:
    """What an honest renderer makes of a frame: the same pixels on any node."""
    return np.random.default_rng(frame).integers(0, 256, (HEIGHT, WIDTH, 3))


def rendered(params: dict, wrong: bool) -> dict[str, bytes]:
    """The outputs of a render task's params, as the worker names them."""
    box = params.get("tile")
    x0, x1, y0, y1 = box or (0, WIDTH, 0, HEIGHT)
    out = {}
    for frame in params["frames"]:
        pixels = frame_image(frame)[HEIGHT - y1 : HEIGHT - y0, x0:x1]
        if wrong:
            pixels = 255 - pixels
        out[output_name(frame, box and tuple(box), "png")] = png(pixels, filters=(0,))
    return out


def batch(
    node: FakeNode, items: list[tuple[Attempt, Task, str]], wrong: bool = False
) -> tuple[list[bytes], dict[str, bytes]]:
    """Renders what each attempt asks (a spot check's crop, or the task): the statements
    and the outputs' bytes, by digest."""
    statements, inline = [], {}
    for attempt, task, _ in items:
        outputs = rendered(json.loads(attempt.params or task.params), wrong)
        inline.update({sha256_hex(d): d for d in outputs.values()})
        statements.append(
            common_pb2.ResultStatement(
                job_id=task.job_id,
                task_id=task.id,
                attempt_id=attempt.id,
                node_id=node.id,
                inputs=[common_pb2.InputRef(name=r.name, digest=r.digest) for r in task.inputs],
                outputs=[
                    common_pb2.OutputRef(name=n, digest=sha256_hex(d), size=len(d))
                    for n, d in outputs.items()
                ],
            ).SerializeToString()
        )
    return statements, inline


def report(node: FakeNode, statements: list[bytes], inline: dict[str, bytes]) -> list[Verdict]:
    signature = sign_batch(node.signer, statements)
    return node.app.intake.results(node.id, statements, signature, inline)


def answer(node: FakeNode, items: list[tuple[Attempt, Task, str]], wrong: bool = False) -> None:
    verdicts = report(node, *batch(node, items, wrong))
    assert all(v.accepted for v in verdicts), verdicts


def run(node: FakeNode, wrong: bool = False) -> list[Attempt]:
    node.app.scheduler.grant(node.id, 0, 10)
    node.app.scheduler.dispatch()
    items = node.sink.take()
    if items:
        answer(node, items, wrong)
    return [attempt for attempt, _, _ in items]


def setup(tmp_path: Path, *owners: str, **params: object) -> tuple[App, str, list[FakeNode]]:
    app = make_app(
        tmp_path, trust=TrustConfig(warmup=10**9), prices={"render": Price(1, 1000)}
    )  # every result checked; credit = ceil(pixels x samples / 1000)
    app.spot_checks.rng = random.Random(7)
    alice = make_client(app, credit=10_000)
    digest = sha256_hex(SCENE)
    app.blobs.path(digest).parent.mkdir(parents=True, exist_ok=True)
    app.blobs.path(digest).write_bytes(SCENE)
    app.store.add_blob_owners([digest], alice.id)
    spec = {"frame_start": 1, "frame_end": 2, "samples": SAMPLES, "resolution": [WIDTH, HEIGHT]}
    spec.update(params)
    job = app.jobs.submit(
        alice,
        JobSpec(kind="render", params=json.dumps(spec).encode(), inputs={"scene": digest}),
    )
    fleet = [FakeNode(app, f"n{i}", kinds=("render",), owner=o) for i, o in enumerate(owners)]
    for node in fleet:
        node.connect(credit=0)
    return app, job.id, fleet
