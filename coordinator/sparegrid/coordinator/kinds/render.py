"""The `render` job kind: a Blender scene rendered with Cycles, by frames or by tiles.

Job params (JSON):
  frame_start, frame_end   the frames to render, inclusive (frame_step: every Nth, default 1)
  chunk                    frames per task, for very short frames (default 1)
  samples                  Cycles samples per pixel
  resolution               [width, height] in pixels
  format                   "png" (depth 8 or 16) or "exr" (depth 16: half, 32: float)
  tiles                    [columns, rows]: one still frame split into border crops
Input "scene" is the .blend file (external files packed). One task renders one chunk of
frames, or one tile; its credit units (`work`) are pixels x samples.
"""

import json
import math
import random
from typing import Any

from sparegrid.coordinator.domain import FileRef
from sparegrid.coordinator.kinds.base import (
    MAX_TASKS_PER_JOB,
    Files,
    TaskPlan,
    bad,
    check_inputs,
    check_keys,
    int_param,
)
from sparegrid.coordinator.kinds.blendfile import BlendError, blend_version

NAME = "render"
FORMATS = {"png": (8, 16), "exr": (16, 32)}
MAX_FRAME = 1_048_574  # Blender's MAXFRAME
MAX_SIDE = 65_536
MAX_SAMPLES = 1 << 24
MAX_TILES = 64
MAX_CHUNK = 1000
MIN_CROP = 16  # pixels on a side of a spot check's crop
# pixels rendered around a spot check's crop of a whole frame, for the denoiser: with 16,
# honest crops of denoised frames came within 47.5 dB PSNR of the frame, with none 37.8
# (bench/results/frames-*.txt)
SPOT_MARGIN = 16
_KEYS = {
    "frame_start",
    "frame_end",
    "frame_step",
    "chunk",
    "samples",
    "resolution",
    "format",
    "depth",
    "tiles",
}


def _pair(params: dict[str, Any], key: str, high: int, what: str) -> tuple[int, int] | None:
    value = params.get(key)
    if value is None:
        return None
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        raise bad(NAME, f"{key!r} must be [{what}], two integers, got {value!r}")
    a, b = value
    if not (1 <= a <= high and 1 <= b <= high):
        raise bad(NAME, f"{key!r} values must be 1..{high}, got {value}")
    return a, b


def _format(params: dict[str, Any]) -> tuple[str, int]:
    fmt = params.get("format", "png")
    if fmt not in FORMATS:
        raise bad(NAME, f"unknown output format {fmt!r}; use one of: {', '.join(FORMATS)}")
    depths = FORMATS[fmt]
    depth = params.get("depth", depths[0])
    if depth not in depths or isinstance(depth, bool):
        raise bad(NAME, f"{fmt} depth must be one of {list(depths)}, got {depth!r}")
    return fmt, depth


def tile_boxes(width: int, height: int, columns: int, rows: int) -> list[tuple[int, ...]]:
    """Pixel boxes (x0, x1, y0, y1), y from the bottom as Blender counts, row by row."""
    xs = [i * width // columns for i in range(columns + 1)]
    ys = [j * height // rows for j in range(rows + 1)]
    return [(xs[i], xs[i + 1], ys[j], ys[j + 1]) for j in range(rows) for i in range(columns)]


def spot_check(
    params: dict[str, Any], rng: random.Random, share: float, margin: int = 0
) -> dict[str, Any] | None:
    """A task's params cut down to one random crop, about `share` of its pixels, of one of
    its frames: what a spot check re-renders. None when frames are not compared by their
    pixels (EXR is compared bit for bit) or the task is too small to crop.

    A crop of a whole frame is rendered as the frame was (with the scene's denoiser) and
    `margin` pixels wider on each side, inside the frame, so that the denoiser sees about
    what it saw there: "tile" is the box rendered, "crop" the box compared. A crop of a
    tile (of a tiled still, rendered without denoiser or dither) is the box compared."""
    if params.get("format") != "png":
        return None
    width, height = params["resolution"]
    tile = params.get("tile")
    x0, x1, y0, y1 = tile or (0, width, 0, height)
    side = math.sqrt(share)
    w = min(x1 - x0, max(MIN_CROP, round((x1 - x0) * side)))
    h = min(y1 - y0, max(MIN_CROP, round((y1 - y0) * side)))
    left, bottom = rng.randrange(x0, x1 - w + 1), rng.randrange(y0, y1 - h + 1)
    box = [left, left + w, bottom, bottom + h]
    if _area(box) * 2 > (x1 - x0) * (y1 - y0):
        return None  # most of the task: it is as cheap to render all of it again
    frame = rng.choice(params["frames"])
    if tile is not None:
        return {**params, "frames": [frame], "tile": box}
    for m in range(margin, -1, -1):  # a small frame gets less margin: at most half of it
        rendered = [max(x0, left - m), min(x1, left + w + m)]
        rendered += [max(y0, bottom - m), min(y1, bottom + h + m)]
        if _area(rendered) * 2 <= (x1 - x0) * (y1 - y0):
            break
    return {**params, "frames": [frame], "tile": rendered, "crop": box}


def _area(box: list[int]) -> int:
    return (box[1] - box[0]) * (box[3] - box[2])


def crop_work(params: dict[str, Any]) -> int:
    """Work units of rendering a crop: its pixels x samples."""
    x0, x1, y0, y1 = params["tile"]
    return int((x1 - x0) * (y1 - y0) * params["samples"] * len(params["frames"]))


class Render:
    name = NAME
    work_unit = "pixel-sample"
    description = (
        "Blender Cycles render of input 'scene' (.blend); params: frame_start, frame_end, "
        "frame_step, chunk, samples, resolution [w, h], format png|exr, depth, tiles [n, m]"
    )

    def plan(
        self, params: dict[str, Any], inputs: dict[str, FileRef], files: Files
    ) -> list[TaskPlan]:
        check_keys(NAME, params, _KEYS)
        check_inputs(NAME, inputs, {"scene"})
        scene = inputs["scene"]
        fmt, depth = _format(params)
        resolution = _pair(params, "resolution", MAX_SIDE, "width, height")
        if resolution is None:
            raise bad(NAME, "'resolution' [width, height] is required")
        if "samples" not in params:
            raise bad(NAME, "'samples' (Cycles samples per pixel) is required")
        samples = int_param(NAME, params, "samples", 1, 1, MAX_SAMPLES)
        start = int_param(NAME, params, "frame_start", 1, 0, MAX_FRAME)
        end = int_param(NAME, params, "frame_end", start, 0, MAX_FRAME)
        step = int_param(NAME, params, "frame_step", 1, 1, MAX_FRAME)
        chunk = int_param(NAME, params, "chunk", 1, 1, MAX_CHUNK)
        if end < start:
            raise bad(NAME, f"frame_end {end} is before frame_start {start}")
        tiles = _pair(params, "tiles", MAX_TILES, "columns, rows")
        try:
            blend_version(files.path(scene.digest))
        except BlendError as exc:
            raise bad(NAME, f"input 'scene' ({scene.size} bytes): {exc}") from None
        common = {"samples": samples, "resolution": list(resolution), "format": fmt}
        common["depth"] = depth
        width, height = resolution
        if tiles is not None:
            return self._tiles(common, scene, start, end, tiles, width, height, samples)
        frames = list(range(start, end + 1, step))
        chunks = [frames[i : i + chunk] for i in range(0, len(frames), chunk)]
        if len(chunks) > MAX_TASKS_PER_JOB:
            raise bad(NAME, f"{len(chunks)} tasks is more than {MAX_TASKS_PER_JOB}; raise chunk")
        return [
            TaskPlan(
                params={**common, "frames": part, "tile": None},
                inputs=[scene],
                work=width * height * samples * len(part),
            )
            for part in chunks
        ]

    def _tiles(
        self,
        common: dict[str, Any],
        scene: FileRef,
        start: int,
        end: int,
        tiles: tuple[int, int],
        width: int,
        height: int,
        samples: int,
    ) -> list[TaskPlan]:
        if end != start:
            raise bad(NAME, f"tiles split one still frame; got frames {start}-{end}")
        columns, rows = tiles
        if columns > width or rows > height:
            raise bad(NAME, f"{columns}x{rows} tiles do not fit a {width}x{height} frame")
        plans = []
        for box in tile_boxes(width, height, columns, rows):
            x0, x1, y0, y1 = box
            plans.append(
                TaskPlan(
                    params={**common, "frames": [start], "tile": list(box)},
                    inputs=[scene],
                    work=(x1 - x0) * (y1 - y0) * samples,
                )
            )
        return plans


def still_name(params: bytes) -> str:
    """The file a tiled still's results stitch into ("still.png"), "" for any other job:
    told to its owner (Job.still) so a preview of a running tiled job says at once that
    tiles are not frames. Params were checked at submit; anything odd reads as untiled."""
    try:
        decoded = json.loads(params) if params else {}
    except (UnicodeDecodeError, json.JSONDecodeError):
        return ""
    if not isinstance(decoded, dict) or not decoded.get("tiles"):
        return ""
    fmt = decoded.get("format", "png")
    return f"still.{fmt}" if fmt in ("png", "exr") else ""
