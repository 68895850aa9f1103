"""The extension's panel values turned into the SDK's render arguments (no Blender UI: a
stand-in scene with the attributes `render_args` reads; bpy is imported, in a subprocess)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.render.conftest import needs_bpy

ROOT = Path(__file__).resolve().parents[2]
ARGS = """
import json, sys
from types import SimpleNamespace as NS
sys.path.insert(0, sys.argv[1])
from sparegrid_blender import render_args
panel = NS(resolution_x=0, resolution_y=0, tiles_x=1, tiles_y=1, frame_start=0, frame_end=0,
           samples=0, file_format="png")
render = NS(resolution_x=1923, resolution_y=1081, resolution_percentage=50)
scene = NS(sparegrid=panel, render=render, frame_start=1, frame_end=9, frame_step=2,
           frame_current=3, cycles=NS(samples=16))
print(json.dumps(render_args(scene)))
"""


@needs_bpy
@pytest.mark.timeout(60)
def test_the_panel_renders_the_scenes_frames_and_size_as_blender_would() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", ARGS, str(ROOT / "sdk" / "blender")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    args = json.loads(proc.stdout.strip().splitlines()[-1])
    assert args["frames"] == "1-9:2"  # the scene's Frame Step: 5 frames, not 9
    assert args["resolution"] == [961, 540]  # 1923x1081 at 50%, rounded down as Blender does
