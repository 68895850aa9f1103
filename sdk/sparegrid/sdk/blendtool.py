"""Blender-side helpers the SDK runs in a subprocess (`python -m sparegrid.sdk.blendtool`).

Each command prints one JSON object on the last line of stdout. The client's own .blend is
opened with its scripts disabled here too: inspecting a file must not run it.

  inspect BLEND               frame range, resolution, samples, external files, and what
                              would read a file no packing can bring in (refused)
  pack BLEND OUT              packs external files into a copy at OUT (missing ones: error)

What counts as reading a file is `sparegrid.wire.blendrefs`, the rule workers apply too.
  stitch OUT FMT DEPTH W H TILE...   tiles named tile_xA-B_yC-D.ext into one frame
"""

import json
import os
import re
import sys
from pathlib import Path
from typing import Any

from sparegrid.wire.blendrefs import external_references

_TILE = re.compile(r"tile_x(\d+)-(\d+)_y(\d+)-(\d+)\.\w+$")


def _bpy() -> Any:
    import importlib

    bpy = importlib.import_module("bpy")
    bpy.context.preferences.filepaths.use_scripts_auto_execute = False
    return bpy


def _open(bpy: Any, path: str) -> None:
    bpy.ops.wm.open_mainfile(filepath=path, load_ui=False, use_scripts=False)


def _external(bpy: Any) -> tuple[list[str], list[str], list[str]]:
    """(present, missing, unpackable): files Blender can pack that exist, those that do
    not (absolute paths), and what reads a file that no packing brings in."""
    present: list[str] = []
    missing: list[str] = []
    unpackable: list[str] = []
    for ref in external_references(bpy):
        if not ref.packable:
            unpackable.append(ref.describe())
            continue
        full = bpy.path.abspath(ref.path, library=getattr(ref.block, "library", None))
        label = f"{full} ({ref.where})"
        (present if Path(full).exists() else missing).append(label)
    return present, missing, unpackable


def inspect(path: str) -> dict[str, Any]:
    bpy = _bpy()
    _open(bpy, path)
    scene = bpy.context.scene
    r = scene.render
    present, missing, unpackable = _external(bpy)
    return {
        "frame_start": scene.frame_start,
        "frame_end": scene.frame_end,
        "frame_step": scene.frame_step,
        "width": r.resolution_x * r.resolution_percentage // 100,
        "height": r.resolution_y * r.resolution_percentage // 100,
        "samples": scene.cycles.samples,
        "engine": r.engine,
        "camera": scene.camera is not None,
        "blender": bpy.app.version_string,
        "external": present,
        "missing": missing,
        "unpackable": unpackable,
    }


def pack(path: str, out: str) -> dict[str, Any]:
    bpy = _bpy()
    _open(bpy, path)
    present, missing, unpackable = _external(bpy)
    if missing or unpackable:
        return {"missing": missing, "unpackable": unpackable}
    bpy.ops.file.pack_all()
    if bpy.data.libraries:
        bpy.ops.file.pack_libraries()
    left = [ref.describe() for ref in external_references(bpy)]  # e.g. movies
    if left:
        return {"missing": [], "unpackable": left}
    bpy.ops.wm.save_as_mainfile(filepath=out, copy=True, compress=True)
    return {"packed": present, "missing": []}


def stitch(
    out: str, fmt: str, depth: int, width: int, height: int, tiles: list[str]
) -> dict[str, Any]:
    import numpy as np

    bpy = _bpy()
    wide = fmt == "exr" or depth == 16
    raw = fmt == "png"  # PNG values as stored, with no colour transform either way
    full = np.zeros((height, width, 4), dtype=np.float32)
    covered = 0
    for tile in tiles:
        m = _TILE.search(tile)
        if m is None:
            raise SystemExit(f"not a tile file name: {tile}")
        x0, x1, y0, y1 = map(int, m.groups())
        img = bpy.data.images.load(tile)
        if raw:
            img.colorspace_settings.is_data = True
        w, h = img.size
        if (w, h) != (x1 - x0, y1 - y0):
            raise SystemExit(f"{tile} is {w}x{h}, its name says {x1 - x0}x{y1 - y0}")
        buf = np.empty(w * h * 4, dtype=np.float32)
        img.pixels.foreach_get(buf)
        full[y0:y1, x0:x1] = buf.reshape(h, w, 4)
        covered += w * h
        bpy.data.images.remove(img)
    if covered != width * height:
        raise SystemExit(f"tiles cover {covered} of {width * height} pixels")
    image = bpy.data.images.new("stitched", width, height, alpha=True, float_buffer=wide)
    if raw:
        image.colorspace_settings.is_data = True
    image.pixels.foreach_set(full.ravel())
    scene = bpy.context.scene
    settings = scene.render.image_settings
    settings.file_format = "PNG" if fmt == "png" else "OPEN_EXR"
    settings.color_mode = "RGBA"
    settings.color_depth = str(depth)
    if fmt == "exr":
        settings.exr_codec = "ZIP"
    image.save_render(out, scene=scene)
    return {"written": out}


def main(argv: list[str]) -> int:
    command, args = argv[1], argv[2:]
    if command == "inspect":
        result = inspect(args[0])
    elif command == "pack":
        result = pack(args[0], args[1])
    elif command == "stitch":
        out, fmt, depth, width, height, *tiles = args
        result = stitch(out, fmt, int(depth), int(width), int(height), tiles)
    else:
        raise SystemExit(f"unknown command {command!r}")
    sys.stdout.write("\n" + json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    code = main(sys.argv)
    sys.stdout.flush()
    # Blender can crash tearing down what the file loaded (a fluid domain's solver aborts
    # at exit): the answer is written, so leave without the teardown.
    os._exit(code)
