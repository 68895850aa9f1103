"""Render benchmark: one short animation, rendered directly with bpy and through the grid.

In one run on this machine:
  (a) direct: one Python process imports bpy, opens the scene, renders every frame;
  (b) a real coordinator and 1 worker process: `client.render(...)`, submit -> all done;
  (c) the same with 2 worker processes.
It reports frames per minute, the network path's overhead per frame (dispatch, transfer,
signatures, results; with 2 workers also the checks' renders) against the executors' own
time per accepted frame (from the signed statements, so a noisy shared machine slows both
alike), the cold start (the worker's child process, Blender's import, the file load: all
in the cold job's executor time) and the scaling from 1 to 2 workers. A "cold" job is the
first on fresh workers; a "warm" one follows it on the same scene, with Blender and the
scene still open.

With 2 workers (two owners, both new) every frame is checked: the run is made twice, with
spot checks (a random crop re-rendered, the default) and with whole re-renders
(--spot-share 0), and the work the checks added is reported from the credit paid (price
1 credit per 1000 pixel-samples). Prints a table and saves it under bench/results/.

    python bench/render.py [--frames 12] [--resolution 160x120] [--samples 16] [--label short]
"""

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from dispatch import RESULTS, start_cluster, stop, wait_online

from sparegrid.sdk import AdminClient, Client
from sparegrid.v1 import common_pb2

SCENE = """
import sys, bpy
bpy.ops.wm.read_factory_settings(use_empty=False)
s = bpy.context.scene
s.render.engine = "CYCLES"
s.cycles.use_denoising = False
s.frame_start, s.frame_end = 1, int(sys.argv[2])
cube = bpy.data.objects["Cube"]
cube.keyframe_insert("location", frame=1)
cube.location = (1.5, 0.0, 0.5)
cube.keyframe_insert("location", frame=s.frame_end)
for i in range(8):
    bpy.ops.mesh.primitive_uv_sphere_add(radius=0.3, location=(i * 0.5 - 2, 1.5, 0.2 * i))
bpy.ops.wm.save_as_mainfile(filepath=sys.argv[1])
"""

DIRECT = """
import json, sys, time
t0 = time.perf_counter()
import bpy
bpy.ops.wm.open_mainfile(filepath=sys.argv[1], load_ui=False, use_scripts=False)
s = bpy.context.scene
s.render.resolution_x, s.render.resolution_y = int(sys.argv[3]), int(sys.argv[4])
s.render.resolution_percentage = 100
s.cycles.samples = int(sys.argv[5])
s.render.use_persistent_data = True
s.render.image_settings.file_format = "PNG"
startup = time.perf_counter() - t0
times = []
for frame in range(1, int(sys.argv[2]) + 1):
    t = time.perf_counter()
    s.frame_set(frame)
    s.render.filepath = f"{sys.argv[6]}/frame_{frame:04d}"
    bpy.ops.render.render(write_still=True)
    times.append(time.perf_counter() - t)
print(json.dumps({"startup": startup, "frames": times}))
"""


def direct(scene: Path, frames: int, width: int, height: int, samples: int, out: Path) -> Any:
    args = [str(scene), str(frames), str(width), str(height), str(samples), str(out)]
    proc = subprocess.run(
        [sys.executable, "-c", DIRECT, *args], capture_output=True, text=True, check=True
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


PRICE = 1000  # pixel-samples per credit, so that a crop's credit shows its size


def networked(
    root: Path, scene: Path, workers: int, frames: int, size: str, samples: int, spot: str
) -> dict[str, float]:
    """Seconds for: the SDK's checks + upload + submit; a cold job (the worker's child
    starts and imports Blender); the same job again on warm workers (scene already open).
    Also the credit each job spent, which counts the checks' work."""
    extra = ("--price", f"render=1/{PRICE}", "--spot-share", spot)
    address, procs = start_cluster(root, workers, prefetch=2, sync="FULL", extra=extra)
    times: dict[str, float] = {}
    try:
        key_file = root / "coord" / "admin.key"
        admin = AdminClient(address, api_key=key_file.read_text().strip())
        _, key = admin.create_account("bench", credit=10**12)
        wait_online(admin, workers)
        with Client(address, api_key=key) as client:
            for run in ("cold", "warm"):
                start = time.perf_counter()
                job = client.render(scene, f"1-{frames}", samples, size)
                submitted = time.perf_counter()
                job = job.wait(timeout=3600)
                times[run] = time.perf_counter() - submitted
                times[f"{run}_submit"] = submitted - start
                if job.state != "succeeded":
                    raise RuntimeError(f"render job ended {job.state}: {job.error}")
                executed = 0.0
                for result in job.results():
                    result.verify()
                    assert result.receipt is not None
                    statement = common_pb2.ResultStatement.FromString(result.receipt.statement)
                    executed += statement.metrics.duration_us / 1e6
                times[f"{run}_exec"] = executed  # the executors' own time, signed by the nodes
                times[f"{run}_spent"] = job.cost_spent
        return times
    finally:
        stop(procs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--resolution", default="160x120")
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--label", default="")
    args = parser.parse_args()
    width, height = map(int, args.resolution.split("x"))
    with tempfile.TemporaryDirectory(prefix="sparegrid-bench-render-") as tmp:
        root = Path(tmp)
        scene = root / "scene.blend"
        subprocess.run(
            [sys.executable, "-c", SCENE, str(scene), str(args.frames)],
            capture_output=True,
            check=True,
        )
        (root / "direct").mkdir()
        d = direct(scene, args.frames, width, height, args.samples, root / "direct")
        runs: dict[str, dict[str, float]] = {}
        for name, workers, spot in [("1", 1, "0.0625"), ("2", 2, "0.0625"), ("2w", 2, "0")]:
            run_root = root / f"grid{name}"
            run_root.mkdir()
            runs[name] = networked(
                run_root, scene, workers, args.frames, args.resolution, args.samples, spot
            )
    render_s = sum(d["frames"])
    per_frame = render_s / args.frames
    rows: list[tuple[str, str]] = [
        ("scene", f"{args.frames} frames, {args.resolution}, {args.samples} samples, CPU"),
        ("direct bpy: start-up (import + open)", f"{d['startup']:.2f} s"),
        ("direct bpy: render time per frame", f"{per_frame:.3f} s"),
        (
            "direct bpy: frames/min (with start-up)",
            f"{60 * args.frames / (render_s + d['startup']):.1f}",
        ),
    ]
    frame_credit = -(-width * height * args.samples // PRICE)
    for name, t in runs.items():
        workers = int(name[0])
        label = f"grid, {workers} worker{'s' if workers > 1 else ''}"
        if name.endswith("w"):
            label += " (checks re-render whole frames)"
        rows += [
            (f"{label}: SDK check (bpy subprocess) + upload + submit", f"{t['warm_submit']:.2f} s"),
        ]
        for run in ("cold", "warm"):
            # time a slot was not inside an accepted frame's executor: dispatch, transfer,
            # signing, results, and with 2 owners the checks' renders
            idle = (t[run] * workers - t[f"{run}_exec"]) / args.frames
            frame = t[f"{run}_exec"] / args.frames
            rows += [
                (
                    f"{label}: {run} job, submit -> all verified",
                    f"{t[run]:.2f} s, {60 * args.frames / t[run]:.1f} frames/min",
                ),
                (
                    f"{label}: {run} job, executor time / other slot time per frame",
                    f"{frame * 1000:.0f} ms / {idle * 1000:.0f} ms ({100 * idle / frame:.1f}%)",
                ),
            ]
        checks = t["warm_spent"] / (frame_credit * args.frames) - 1
        rows.append((f"{label}: work added by checks (credit paid)", f"{100 * checks:.0f}%"))
    rows += [
        ("scaling 1 -> 2 workers (warm)", f"{runs['1']['warm'] / runs['2']['warm']:.2f}x"),
        (
            "2 workers, warm: spot checks vs whole re-renders",
            f"{runs['2w']['warm'] / runs['2']['warm']:.2f}x faster",
        ),
    ]
    width_col = max(len(k) for k, _ in rows)
    text = "\n".join(f"{k:<{width_col}}  {v}" for k, v in rows)
    text += f"\n(machine: {platform.node()}, {platform.processor() or platform.machine()})"
    print(text)
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = f"render-{args.label + '-' if args.label else ''}{stamp}"
    (RESULTS / f"{name}.txt").write_text(text + "\n")
    (RESULTS / f"{name}.json").write_text(
        json.dumps({"args": vars(args), "direct": d, "grid": runs, "rows": rows}, indent=2) + "\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
