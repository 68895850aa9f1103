"""Render jobs end to end: a real coordinator and two worker processes rendering with bpy."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sparegrid.sdk import AsyncClient, InvalidArgumentError, SparegridError
from sparegrid.sdk.render import stitch_tiles
from sparegrid.v1 import common_pb2
from tests.e2e.conftest import Cluster
from tests.e2e.helpers import run_cli

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]
HERE = Path(__file__).parent
SIZE = {"samples": 4, "resolution": "48x36"}


# `sparegrid` as run where bpy is not installed (find_spec is how the CLI asks)
NO_BPY_CLI = """
import importlib.util, sys
find = importlib.util.find_spec
importlib.util.find_spec = lambda name, *a: None if name == "bpy" else find(name, *a)
from sparegrid.cli.main import main
sys.exit(main())
"""


def compare(a: Path, b: Path) -> dict:
    proc = subprocess.run(
        [sys.executable, str(HERE / "imagediff.py"), str(a), str(b)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def cli(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(cluster.env, *args, "--coordinator", cluster.address, timeout=300)


def test_animation_across_two_workers_comes_back_complete_and_in_order(
    grid, scenes, tmp_path
) -> None:
    cluster, client = grid
    job = client.render(scenes / "anim.blend", frames="1-6", **SIZE).wait(timeout=120)
    assert job.state == "succeeded", job.error
    results = sorted(job.results(), key=lambda r: r.index)
    assert [[o.name for o in r.outputs] for r in results] == [
        [f"frame_{n:04d}.png"] for n in range(1, 7)
    ]
    for r in results:
        r.verify()
        assert r.output(r.outputs[0].name).startswith(b"\x89PNG\r\n\x1a\n")
    assert len({r.node_id for r in results}) == 2  # prefetch 1: both workers took frames
    # new nodes are always checked: the other node re-rendered a random crop of each frame
    # with its own Blender, and it matched the frame's pixels
    key = client.coordinator_key()
    checks = [r.validation(key) for r in results]
    assert {v.method for v in checks} == {common_pb2.VALIDATION_METHOD_SPOT_CHECKED}, checks
    assert all(len(v.agreeing_nodes) == 2 for v in checks)
    assert results[0].outputs[0].digest != results[5].outputs[0].digest  # the cube moved
    name, data = job.preview()
    assert name == "frame_0006.png" and data == results[5].output(name)

    out = tmp_path / "frames"
    done = cli(cluster, "job", "results", job.id, "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.glob("frame_*.png")) == [
        f"frame_{n:04d}.png" for n in range(1, 7)
    ]
    assert len(list((out / "receipts").iterdir())) == 6
    index = json.loads((out / "results.json").read_text())
    assert all(e["verified"] for e in index["results"])
    assert (out / "frame_0003.png").read_bytes() == results[2].output("frame_0003.png")


def test_spot_checks_of_a_denoised_dithered_scene_agree(grid, scenes) -> None:
    """Blender's default scene denoises and dithers. Every frame's crop used to be rendered
    without either (and now and then a row too tall): honest jobs failed NO_AGREEMENT."""
    _, client = grid
    job = client.render(scenes / "default.blend", frames="1-6", samples=8, resolution="320x180")
    job = job.wait(timeout=150)
    assert job.state == "succeeded", job.error
    key = client.coordinator_key()
    checks = [r.validation(key) for r in job.results()]
    assert {v.method for v in checks} == {common_pb2.VALIDATION_METHOD_SPOT_CHECKED}, checks


def test_tiled_still_matches_the_untiled_frame(grid, scenes, tmp_path) -> None:
    cluster, client = grid
    whole = client.render(scenes / "anim.blend", frames=3, format="exr", depth=32, **SIZE)
    tiled = client.render(
        scenes / "anim.blend", frames=3, format="exr", depth=32, tiles="3x2", **SIZE
    )
    whole, tiled = whole.wait(timeout=120), tiled.wait(timeout=120)
    assert whole.state == "succeeded" and tiled.state == "succeeded", (whole.error, tiled.error)
    frame = tmp_path / "frame_0003.exr"
    frame.write_bytes(whole.results()[0].output("frame_0003.exr"))
    results = tiled.results()
    assert len(results) == 6
    tiles = []
    for r in results:
        r.verify()
        (ref,) = r.outputs
        tiles.append(tmp_path / ref.name)
        tiles[-1].write_bytes(r.output(ref.name))
    stitched = stitch_tiles(tiles, tmp_path / "stitched.exr", 48, 36)
    diff = compare(frame, stitched)
    assert diff.get("psnr", 0) >= 40, diff
    assert diff["max"] == 0.0, diff  # Cycles is deterministic per pixel: exact

    # the CLI stitches a tiled job's results itself
    out = tmp_path / "still"
    done = cli(cluster, "job", "results", tiled.id, "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert compare(frame, out / "still.exr")["max"] == 0.0

    # without bpy the tiles are kept, and the hint names where they are (not the
    # staging directory they were written to before it took DIR's name)
    bare = tmp_path / "bare"
    argv = ["job", "results", tiled.id, "-o", str(bare), "--coordinator", cluster.address]
    done = subprocess.run(
        [sys.executable, "-c", NO_BPY_CLI, *argv],
        capture_output=True,
        text=True,
        env=cluster.env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert f"tiles are in {bare / 'tiles'}; stitching EXR tiles" in done.stderr
    assert len(list((bare / "tiles").glob("*.exr"))) == 6 and not (bare / "still.exr").exists()


def test_png_tiles_stitch_on_the_client_and_preview_saves_a_frame(grid, scenes, tmp_path) -> None:
    """A tiled PNG still is stitched by `job results` without Blender's help (Pillow and
    numpy), equal to the untiled frame; `job preview` saves the latest or a chosen frame."""
    from sparegrid.wire.png import png_levels

    cluster, client = grid
    found = client.render_estimate(scenes / "anim.blend", frames="1-3", **SIZE)
    assert (found.tasks, found.work_units, found.credit_per_pass) == (3, 48 * 36 * 4 * 3, 3)
    assert "worth 0.002074 credit a pass, charged 3" in found.rounding
    dry = cli(
        cluster,
        "job",
        "submit",
        "render",
        "--blend",
        str(scenes / "anim.blend"),
        "--frames",
        "3",
        "--samples",
        "4",
        "--resolution",
        "48x36",
        "--tiles",
        "2x2",
        "--dry-run",
        "--json",
    )
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["tasks"] == 4  # a tiled still: 4 tiles
    anim = client.render(scenes / "anim.blend", frames="1-3", **SIZE)
    tiled = client.render(scenes / "anim.blend", frames=3, tiles="2x2", **SIZE)
    anim, tiled = anim.wait(timeout=120), tiled.wait(timeout=120)
    assert anim.state == "succeeded" and tiled.state == "succeeded", (anim.error, tiled.error)
    out = tmp_path / "still"
    done = cli(cluster, "job", "results", tiled.id, "-o", str(out))
    assert done.returncode == 0, done.stderr
    frame3 = next(r for r in anim.results() if r.outputs[0].name == "frame_0003.png")
    whole = png_levels(frame3.output("frame_0003.png"))
    stitched = png_levels((out / "still.png").read_bytes())
    assert stitched.shape == whole.shape == (36, 48, 4)
    # tiles render without the denoiser and dither a whole frame gets: close, not equal
    assert np.abs(stitched.astype(int) - whole.astype(int)).mean() < 8

    latest = cli(cluster, "job", "preview", anim.id, "-o", str(tmp_path / "latest.png"))
    assert latest.returncode == 0, latest.stderr
    assert "frame_0003.png" in latest.stdout
    assert (tmp_path / "latest.png").read_bytes() == frame3.output("frame_0003.png")
    second = cli(cluster, "job", "preview", anim.id, "--frame", "2", "-o", str(tmp_path / "2.png"))
    assert second.returncode == 0 and "frame_0002.png" in second.stdout
    missing = cli(cluster, "job", "preview", anim.id, "--frame", "9", "-o", str(tmp_path / "9.png"))
    assert missing.returncode == 1 and "[FRAME_NOT_FOUND]" in missing.stderr
    assert (
        f"job {anim.id} ended (succeeded) without a frame 9; its frames: 1, 2, 3" in missing.stderr
    )
    assert not (tmp_path / "9.png").exists()
    # a tiled still has tiles, not frames: said so, with the command that stitches them
    still = cli(cluster, "job", "preview", tiled.id, "-o", str(tmp_path / "still.png"))
    assert still.returncode == 1 and "[NO_FRAMES]" in still.stderr
    assert f"job {tiled.id} renders one still in tiles" in still.stderr
    assert f"`sparegrid job results {tiled.id} -o DIR` stitches the tiles into DIR/still.png" in (
        still.stderr
    )
    assert "job wait" not in still.stderr and not (tmp_path / "still.png").exists()


def test_python_in_the_scene_never_runs(grid, scenes) -> None:
    _, client = grid
    sentinels = [scenes / "sentinel_text", scenes / "sentinel_driver"]
    job = client.render(scenes / "evil.blend", frames="1-2", **SIZE).wait(timeout=120)
    assert job.state == "succeeded", job.error
    assert [p.name for p in sentinels if p.exists()] == []
    # the control: the same file, opened with its scripts trusted, leaves both sentinels
    control = (
        "import sys, bpy\n"
        "bpy.context.preferences.filepaths.use_scripts_auto_execute = True\n"
        "bpy.ops.wm.open_mainfile(filepath=sys.argv[1], use_scripts=True)\n"
        "bpy.context.scene.frame_set(2)\n"
    )
    subprocess.run(
        [sys.executable, "-c", control, str(scenes / "evil.blend")], check=True, capture_output=True
    )
    try:
        assert all(p.exists() for p in sentinels)
    finally:
        for p in sentinels:
            p.unlink(missing_ok=True)


def test_external_files_are_packed_or_refused(grid, scenes) -> None:
    _, client = grid
    job = client.render(scenes / "external.blend", frames=1, **SIZE).wait(timeout=120)
    assert job.state == "succeeded", job.error
    with pytest.raises(InvalidArgumentError) as info:
        client.render(scenes / "missing.blend", frames=1, **SIZE)
    assert info.value.code == "MISSING_FILES"
    assert "no-such-texture.png" in info.value.message
    # sent without the SDK's check, a worker refuses it rather than render a pink texture
    digest = client.upload(scenes / "missing.blend")
    params = {"frame_start": 1, "samples": 4, "resolution": [48, 36]}
    job = client.submit("render", params, {"scene": digest}, max_attempts=1).wait(timeout=120)
    assert job.state == "failed"
    (result,) = job.results()
    assert "not packed" in result.error and "no-such-texture.png" in result.error
    # its preview says it ended without a frame, rather than to wait for one
    cluster = grid[0]
    shown = cli(cluster, "job", "preview", job.id, "-o", str(cluster.root / "none.png"))
    assert shown.returncode == 1 and "[NO_FRAMES]" in shown.stderr
    assert f"job {job.id} ended (failed) without a finished frame" in shown.stderr
    assert "job wait" not in shown.stderr


def test_bad_input_is_rejected_at_submit(grid, scenes, tmp_path) -> None:
    cluster, client = grid
    not_blend = tmp_path / "notes.blend"
    not_blend.write_text("these are my notes, not a scene\n")
    corrupt = tmp_path / "corrupt.blend"
    data = (scenes / "anim.blend").read_bytes()
    corrupt.write_bytes(data[: len(data) // 2])
    cases = [
        ({"blend": not_blend, "frames": 1}, "BAD_INPUT", "is not a .blend file"),
        ({"blend": corrupt, "frames": 1}, "BAD_INPUT", "not a .blend file Blender can open"),
        (
            {"blend": scenes / "anim.blend", "frames": "5-9"},
            "BAD_FRAMES",
            "outside the scene's frame range 1-6",
        ),
        (
            {"blend": scenes / "anim.blend", "frames": 1, "format": "jpeg"},
            "BAD_PARAMS",
            "unknown output format 'jpeg'",
        ),
    ]
    before = client.account().balance
    for kwargs, code, text in cases:
        with pytest.raises(SparegridError) as info:
            client.render(**kwargs, **SIZE)
        assert info.value.code == code and text in info.value.message, info.value
    # the coordinator checks the same without the SDK: the file itself, and the params
    for path, params, text in (
        (corrupt, {"frame_start": 1, "samples": 4, "resolution": [48, 36]}, "truncated"),
        (not_blend, {"frame_start": 1, "samples": 4, "resolution": [48, 36]}, "not a .blend file"),
        (
            scenes / "anim.blend",
            {"samples": 4, "resolution": [48, 36], "format": "tga"},
            "unknown output format 'tga'",
        ),
    ):
        with pytest.raises(InvalidArgumentError) as info:
            client.submit("render", params, {"scene": client.upload(path)})
        assert info.value.code == "BAD_PARAMS" and text in info.value.message
    done = cli(cluster, "job", "submit", "render", "--blend", str(not_blend), "--samples", "4")
    assert done.returncode != 0 and "is not a .blend file" in done.stderr
    assert client.account().balance == before


def test_a_job_runs_only_on_nodes_with_the_blender_it_requires(grid, scenes) -> None:
    _, client = grid
    other = client.render(scenes / "anim.blend", frames=1, blender="4.2", **SIZE)
    optix = client.render(scenes / "anim.blend", frames=1, blender="5.0", backend="optix", **SIZE)
    same = client.render(scenes / "anim.blend", frames=2, blender="5.0", backend="cpu", **SIZE)
    same = same.wait(timeout=120)
    assert same.state == "succeeded", same.error
    # submitted first, but no node runs Blender 4.2, and these CPU nodes have no OptiX
    for job in (other.refresh(), optix.refresh()):
        assert job.state == "queued" and job.counts.done == 0
        assert job.cancel().state == "cancelled"


async def test_async_client_renders_and_previews(grid, scenes) -> None:
    cluster, _ = grid
    key = cluster.env["SPAREGRID_API_KEY"]
    async with AsyncClient(cluster.address, api_key=key) as client:
        job = await client.render(scenes / "anim.blend", "2-3", 4, (48, 36), format="png", depth=16)
        job = await job.wait(timeout=120)
        assert job.state == "succeeded", job.error
        preview = await job.preview()
    assert preview is not None and preview[0] == "frame_0003.png"
    assert preview[1][24] == 16  # a 16-bit PNG (IHDR bit depth)


def test_cli_submits_a_render_and_waits(grid, scenes) -> None:
    cluster, client = grid
    done = cli(
        cluster,
        "job",
        "submit",
        "render",
        "--blend",
        str(scenes / "anim.blend"),
        "--frames",
        "4-5",
        "--samples",
        "4",
        "--resolution",
        "48x36",
        "--format",
        "exr",
        "--wait",
    )
    assert done.returncode == 0, done.stderr
    job = client.get_job(done.stdout.split()[0])
    assert job.state == "succeeded" and job.counts.total == 2
    names = sorted(r.outputs[0].name for r in job.results())
    assert names == ["frame_0004.exr", "frame_0005.exr"]
