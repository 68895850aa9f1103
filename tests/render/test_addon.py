"""The Blender extension: built into a zip by scripts/build-addon, then run headlessly with
bpy against a live coordinator and two workers (the render grid of test_render_e2e)."""

import json
import os
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from sparegrid.wire.png import png_levels

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]
ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def addon(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built extension, unpacked: the add-on comes from the zip, not the source tree."""
    build = subprocess.run(
        [str(ROOT / "scripts" / "build-addon")],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHON": sys.executable},
        timeout=600,
        check=False,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    zipped = ROOT / build.stdout.strip().splitlines()[-1]
    unpacked = tmp_path_factory.mktemp("addon") / "sparegrid_blender"
    with zipfile.ZipFile(zipped) as z:
        names = set(z.namelist())
        z.extractall(unpacked)
    manifest = tomllib.loads((unpacked / "blender_manifest.toml").read_text())
    assert manifest["type"] == "add-on" and manifest["id"] == "sparegrid"
    assert "network" in manifest["permissions"]
    wheels = manifest["wheels"]
    assert any(w.startswith("./wheels/sparegrid-") for w in wheels)
    assert any(w.startswith("./wheels/grpcio-") for w in wheels)
    assert not any("numpy" in w for w in wheels)  # Blender's own
    assert {w.removeprefix("./") for w in wheels} <= names
    return unpacked


def session(cluster, addon: Path, scene: Path, out: Path, *extra: str, key: bool = True):
    env = {**cluster.env, "SPAREGRID_COORDINATOR": cluster.address}
    if not key:
        env.pop("SPAREGRID_API_KEY", None)
    proc = subprocess.run(
        [
            sys.executable,
            str(HERE / "addon_session.py"),
            str(addon.parent),
            str(scene),
            str(out),
            *extra,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_the_panel_estimates_submits_follows_and_fetches(grid, addon, scenes, tmp_path) -> None:
    cluster, client = grid
    out = tmp_path / "frames"
    found = session(cluster, addon, scenes / "anim.blend", out)
    assert found["panel"] is True
    assert found["estimate_op"] == ["FINISHED"], found
    assert found["estimate"].startswith("2 task(s), ") and "NOT ENOUGH" not in found["estimate"]
    assert found["submit_op"] == ["FINISHED"] and found["state"] == "succeeded", found
    assert found["progress"] == 100.0
    assert found["preview"] == ["frame_0002.png", [48, 36]]  # the latest frame, loaded
    assert found["fetch_op"] == ["FINISHED"]
    assert found["fetched"].startswith("2 new, 0 already")
    assert found["fetched_again"].startswith("0 new, 2 already")
    assert found["frames"] == ["frame_0001.png", "frame_0002.png"]
    job = client.get_job(found["job_id"])
    for result in job.results():
        (ref,) = result.outputs
        result.verify()
        assert (out / ref.name).read_bytes() == result.output(ref.name)
    assert png_levels((out / "frame_0001.png").read_bytes()).shape == (36, 48, 4)
    assert found["tiles_clamped"] == [1, 1] and found["samples_clamped"] == 1 << 20


def test_the_panel_refuses_what_the_sdk_refuses(grid, addon, scenes, tmp_path) -> None:
    cluster, client = grid
    before = {j.id for j in client.list_jobs(1000)}
    missing = session(cluster, addon, scenes / "missing.blend", tmp_path, "submit-only")
    assert missing["submit_op"] == ["CANCELLED"] and "[MISSING_FILES]" in missing["message"]
    assert missing["message"].startswith(f"{scenes / 'missing.blend'} references 1 file")
    keyless = session(cluster, addon, scenes / "anim.blend", tmp_path, "submit-only", key=False)
    assert keyless["submit_op"] == ["CANCELLED"] and "[NO_API_KEY]" in keyless["message"]
    assert {j.id for j in client.list_jobs(1000)} == before  # nothing was submitted
