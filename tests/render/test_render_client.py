"""A render job's results from Python as the CLI writes them, a preview of a tiled still
before any tile is done, and --frames as a list."""

import asyncio
import json
import subprocess

import pytest

from sparegrid.sdk import AsyncClient, InvalidArgumentError
from sparegrid.sdk.resultfiles import RenderFiles
from tests.e2e.conftest import Cluster
from tests.e2e.helpers import run_cli

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]
SIZE = {"samples": 2, "resolution": "64x48"}


def cli(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(cluster.env, *args, "--coordinator", cluster.address, timeout=300)


def test_write_frames_writes_a_tiled_still_as_job_results_does(grid, scenes, tmp_path) -> None:
    cluster, client = grid
    tiled = client.render(scenes / "anim.blend", frames=2, tiles="2x2", **SIZE).wait(timeout=120)
    assert tiled.state == "succeeded", tiled.error
    assert tiled.still == "still.png"
    by_cli = tmp_path / "cli"
    done = cli(cluster, "job", "results", tiled.id, "-o", str(by_cli))
    assert done.returncode == 0, done.stderr
    assert "stitched 4 tiles into still.png (64x48)" in done.stderr

    written = tiled.write_frames(tmp_path / "sdk")
    assert written.still == tmp_path / "sdk" / "still.png" and not written.problems
    assert written.still.read_bytes() == (by_cli / "still.png").read_bytes()
    assert sorted(p.name for p in written.tiles) == sorted(
        p.name for p in (by_cli / "tiles").iterdir()
    )
    assert json.loads((tmp_path / "sdk" / "results.json").read_text())["job"] == tiled.id
    assert len(list((tmp_path / "sdk" / "receipts").iterdir())) == 4
    # what the CLI verifies later, offline, checks out for the SDK's folder too
    check = cli(cluster, "job", "verify", "--dir", str(tmp_path / "sdk"))
    assert check.returncode == 0, check.stderr

    with pytest.raises(InvalidArgumentError) as caught:  # a folder with files: refused
        tiled.write_frames(tmp_path / "sdk")
    assert caught.value.code == "OUTPUT_EXISTS"

    async def from_async() -> RenderFiles:
        key = cluster.env["SPAREGRID_API_KEY"]
        async with AsyncClient(cluster.address, api_key=key) as aclient:
            ajob = await aclient.get_job(tiled.id)
            return await ajob.write_frames(tmp_path / "async")

    awritten = asyncio.run(from_async())
    assert awritten.still is not None
    assert awritten.still.read_bytes() == written.still.read_bytes()

    echo = client.echo("hi").wait(timeout=60)
    with pytest.raises(InvalidArgumentError) as caught:
        echo.write_frames(tmp_path / "echo")
    assert caught.value.code == "NOT_A_RENDER" and not (tmp_path / "echo").exists()


def test_preview_of_a_queued_tiled_still_says_it_has_no_frames(grid, scenes, tmp_path) -> None:
    """No node has Blender 4.2, so no tile is ever done: the preview still knows."""
    cluster, client = grid
    job = client.render(scenes / "anim.blend", frames=2, tiles="2x2", blender="4.2", **SIZE)
    try:
        assert job.still == "still.png" and job.counts.done == 0
        shown = cli(cluster, "job", "preview", job.id, "-o", str(tmp_path / "p.png"))
        assert shown.returncode == 1 and "[NO_FRAMES]" in shown.stderr
        assert f"job {job.id} renders one still in tiles" in shown.stderr
        assert "stitches the tiles into DIR/still.png once it has finished" in shown.stderr
        assert "no finished frame yet" not in shown.stderr
        assert not (tmp_path / "p.png").exists()
    finally:
        job.cancel()
    plain = client.render(scenes / "anim.blend", frames=1, blender="4.2", **SIZE)
    assert plain.still == ""  # an animation or a whole frame stitches nothing
    plain.cancel()


def test_frames_as_a_list_on_the_command_line(grid, scenes) -> None:
    cluster, _ = grid
    common = ("job", "submit", "render", "--blend", str(scenes / "anim.blend"))
    size = ("--samples", "2", "--resolution", "64x48", "--dry-run", "--json")
    listed = cli(cluster, *common, "--frames", "1,3", *size)
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout)["tasks"] == 2
    uneven = cli(cluster, *common, "--frames", "1,2,4", *size)
    assert uneven.returncode != 0
    assert "frames '1,2,4' are not evenly spaced" in uneven.stderr
    assert "a list like 1,3,5 is 1-5:2" in uneven.stderr


def test_a_dry_run_says_when_no_connected_node_has_the_blender_asked(grid, scenes) -> None:
    cluster, _ = grid
    common = ("job", "submit", "render", "--blend", str(scenes / "anim.blend"), "--frames", "1")
    size = ("--samples", "2", "--resolution", "64x48", "--dry-run")
    other = cli(cluster, *common, *size, "--blender", "4.2")
    assert other.returncode == 0, other.stderr
    assert "would wait" in other.stdout
    assert "no connected node can run it: it needs blender 4.2" in other.stdout
    found = json.loads(cli(cluster, *common, *size, "--blender", "4.2", "--json").stdout)
    assert found["waiting"] == "no connected node can run it: it needs blender 4.2"
    same = cli(cluster, *common, *size, "--blender", "5.0")
    assert same.returncode == 0 and "would wait" not in same.stdout
