"""Drives the Blender extension headlessly with bpy, as an artist would through its panel:
`python addon_session.py ADDON_DIR SCENE OUT_DIR [submit-only]` with SPAREGRID_COORDINATOR
and SPAREGRID_API_KEY set. Prints one JSON object (what happened) on its last line;
`submit-only` stops after Submit (for the refusals)."""

import json
import sys
import time
from pathlib import Path

import bpy

addon_dir, scene, out_dir = sys.argv[1], sys.argv[2], sys.argv[3]
bpy.ops.wm.open_mainfile(filepath=scene, load_ui=False, use_scripts=False)
sys.path.insert(0, addon_dir)
import sparegrid_blender  # noqa: E402 -- from the built extension, once bpy is set up


def op(call) -> list[str]:
    """An operator's outcome; one that reports an error raises RuntimeError from Python."""
    try:
        return sorted(call())
    except RuntimeError:
        return ["CANCELLED"]


sparegrid_blender.register()
found: dict[str, object] = {"panel": hasattr(bpy.types, "SPAREGRID_PT_render")}
s = bpy.context.scene.sparegrid
s.frame_start, s.frame_end, s.samples = 1, 2, 4
s.resolution_x, s.resolution_y = 48, 36
s.output_dir = out_dir

found["estimate_op"] = op(bpy.ops.sparegrid.estimate)
found["estimate"] = s.estimate
found["submit_op"] = op(bpy.ops.sparegrid.submit)
found["job_id"] = s.job_id
found["message"] = s.message
if sys.argv[4:] == ["submit-only"]:
    sys.stdout.write("\n" + json.dumps(found) + "\n")
    sys.exit(0)
deadline = time.monotonic() + 120
while time.monotonic() < deadline:
    bpy.ops.sparegrid.refresh()
    if not s.state.startswith(("queued", "running")):
        break
    time.sleep(0.5)
found["state"], found["progress"] = s.state, s.progress
preview = bpy.data.images.get(sparegrid_blender.PREVIEW)
found["preview"] = [s.preview_frame, list(preview.size) if preview else None]
found["fetch_op"] = op(bpy.ops.sparegrid.fetch)
found["fetched"] = s.fetched
bpy.ops.sparegrid.fetch()
found["fetched_again"] = s.fetched
found["frames"] = sorted(p.name for p in Path(out_dir).glob("frame_*"))

s.tiles_x = s.tiles_y = 0  # out of range: Blender clamps to 1, so a whole frame again
found["tiles_clamped"] = [s.tiles_x, s.tiles_y]
s.samples = 1 << 30  # past the property's maximum: clamped too
found["samples_clamped"] = s.samples
sparegrid_blender.unregister()
sys.stdout.write("\n" + json.dumps(found) + "\n")
