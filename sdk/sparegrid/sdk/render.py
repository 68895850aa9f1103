"""Render jobs on the client side: check and pack a .blend, build the params, stitch tiles.

With bpy installed (`pip install bpy==5.0.1`), the scene is inspected in a subprocess
(its frame range, resolution, samples and external files) and external files are packed
into a temporary copy by Blender itself; a file that references missing files, or reads
files no packing can bring in (a Geometry Nodes importer, a cache on disk: workers refuse
those, see `sparegrid.wire.blendrefs`), is refused with their list. Without bpy, resolution and samples must be given and the coordinator's
and workers' checks are all there is (a worker refuses a scene with unpacked files).
"""

import contextlib
import importlib.util
import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sparegrid.sdk.errors import InvalidArgumentError, SparegridError
from sparegrid.wire import png

FORMATS = {"png": (8, 16), "exr": (16, 32)}
BACKENDS = ("optix", "cuda", "cpu")
BLEND_MAGICS = (b"BLENDER", b"\x28\xb5\x2f\xfd", b"\x1f\x8b")
TILE_NAME = re.compile(r"tile_x(\d+)-(\d+)_y(\d+)-(\d+)\.(png|exr)$")
FRAME_NAME = re.compile(r"frame_(\d+)\.(png|exr)$")
TOOL_TIMEOUT = 600.0


def have_blender() -> bool:
    return importlib.util.find_spec("bpy") is not None


@dataclass(frozen=True)
class SceneInfo:
    frame_start: int
    frame_end: int
    width: int
    height: int
    samples: int
    blender: str
    external: list[str]
    missing: list[str]
    camera: bool = True
    unpackable: list[str] = field(default_factory=list)
    frame_step: int = 1  # Blender renders every Nth frame of the range: so do the defaults


def _tool_command(args: Sequence[str]) -> list[str]:
    """A fresh Python with bpy: this one (bpy as a module), or, inside Blender (the add-on),
    Blender itself in the background, told where the sparegrid package is."""
    bpy = sys.modules.get("bpy")
    blender = getattr(getattr(bpy, "app", None), "binary_path", "") if bpy else ""
    if not blender:
        return [sys.executable, "-m", "sparegrid.sdk.blendtool", *args]
    root = str(Path(__file__).resolve().parents[2])  # holds the sparegrid package
    expr = (
        f"import runpy, sys; sys.path.insert(0, {root!r}); "
        f"sys.argv = ['blendtool', *{list(args)!r}]; "
        "runpy.run_module('sparegrid.sdk.blendtool', run_name='__main__')"
    )
    return [
        blender,
        "--background",
        "--factory-startup",
        "--python-exit-code",
        "1",
        "--python-expr",
        expr,
    ]


def _tool(*args: str) -> dict[str, Any]:
    """Runs a blendtool command in a fresh Python with bpy; its JSON answer."""
    proc = subprocess.run(
        _tool_command(args),
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT,
        check=False,
    )
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise SparegridError("BLENDER_FAILED", f"Blender could not {args[0]} {args[1]}: {tail}")
    answer: dict[str, Any] = json.loads(lines[-1])
    return answer


def check_blend_file(path: Path) -> None:
    if path.is_dir():
        raise InvalidArgumentError("BAD_INPUT", f"{path} is a directory; name the .blend file")
    if not path.is_file():
        raise InvalidArgumentError("BAD_INPUT", f"no such .blend file: {path}")
    with path.open("rb") as f:
        head = f.read(8)
    if not head.startswith(BLEND_MAGICS):
        raise InvalidArgumentError(
            "BAD_INPUT", f"{path} is not a .blend file (it starts with {head!r})"
        )


def inspect_scene(path: Path) -> SceneInfo:
    """The scene's settings, read by Blender in a subprocess (needs bpy)."""
    try:
        info = _tool("inspect", str(path))
    except SparegridError as exc:
        raise InvalidArgumentError(
            "BAD_INPUT", f"{path} is not a .blend file Blender can open ({exc.message})"
        ) from None
    return SceneInfo(
        info["frame_start"],
        info["frame_end"],
        info["width"],
        info["height"],
        info["samples"],
        info["blender"],
        list(info["external"]),
        list(info["missing"]),
        bool(info["camera"]),
        list(info.get("unpackable", [])),
        max(1, int(info.get("frame_step", 1))),
    )


def missing_files_error(path: Path, missing: Sequence[str]) -> InvalidArgumentError:
    listing = "; ".join(missing[:20]) + (
        f"; and {len(missing) - 20} more" if len(missing) > 20 else ""
    )
    return InvalidArgumentError(
        "MISSING_FILES",
        f"{path} references {len(missing)} file(s) that do not exist, so frames would render "
        f"with missing textures: {listing}. Fix the paths in Blender, or pack them "
        "(File > External Data > Pack Resources), and submit again",
    )


def unpackable_error(path: Path, found: Sequence[str]) -> InvalidArgumentError:
    listing = "; ".join(found[:20]) + (f"; and {len(found) - 20} more" if len(found) > 20 else "")
    return InvalidArgumentError(
        "UNPACKABLE_FILES",
        f"{path} reads files that Blender cannot pack into it, and workers only read what "
        f"is packed: {listing}. Apply or bake them into the scene's own data (apply the "
        "modifier, realize the imported geometry), or remove them, and submit again",
    )


@contextlib.contextmanager
def packed(path: Path, info: SceneInfo | None) -> Iterator[Path]:
    """The file to upload: `path` itself, or a temporary copy with external files packed."""
    if info is None or not info.external:
        yield path
        return
    tmp = Path(tempfile.mkdtemp(prefix="sparegrid-pack-"))
    try:
        out = tmp / path.name
        answer = _tool("pack", str(path), str(out))
        if answer.get("missing"):
            raise missing_files_error(path, answer["missing"])
        if answer.get("unpackable"):
            raise unpackable_error(path, answer["unpackable"])
        yield out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def parse_frames(frames: "range | Sequence[int] | str | int | None") -> tuple[int, int, int] | None:
    """(start, end, step) from 7, "1-240", "1-240:2", "1,3,5", range(1, 241) or [1, 2, 3]."""
    if frames is None:
        return None
    if isinstance(frames, bool):
        raise InvalidArgumentError("BAD_PARAMS", f"frames must be a range, got {frames!r}")
    if isinstance(frames, int):
        return frames, frames, 1
    if isinstance(frames, str) and "," in frames:
        return _frame_list(frames)
    if isinstance(frames, str):
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?(?::\s*(\d+)\s*)?", frames)
        if m is None:
            raise InvalidArgumentError(
                "BAD_PARAMS", f"frames {frames!r} is not N, START-END or START-END:STEP"
            )
        start, end = int(m[1]), int(m[2] or m[1])
        if end < start:
            raise InvalidArgumentError(
                "BAD_PARAMS",
                f"frames {frames!r} ends before it starts: START-END goes forward, e.g. "
                f"{end}-{start}",
            )
        return start, end, int(m[3] or 1)
    if isinstance(frames, range):
        if len(frames) == 0 or frames.step < 1:
            raise InvalidArgumentError("BAD_PARAMS", f"frames {frames!r} is empty or backwards")
        return frames.start, frames[-1], frames.step
    values = list(frames)
    if not values:
        raise InvalidArgumentError("BAD_PARAMS", "frames is empty")
    step = values[1] - values[0] if len(values) > 1 else 1
    if step < 1 or values != list(range(values[0], values[-1] + 1, step)):
        raise InvalidArgumentError("BAD_PARAMS", "frames must be evenly spaced and increasing")
    return values[0], values[-1], step


def _frame_list(frames: str) -> tuple[int, int, int]:
    """ "1,3,5" as 1-5:2: a job renders one evenly spaced run, so a list must be one."""
    parts = [p.strip() for p in frames.split(",")]
    if not all(p.isdigit() for p in parts):
        raise InvalidArgumentError(
            "BAD_PARAMS",
            f"frames {frames!r} is not N, START-END, START-END:STEP or a list N,N,N",
        )
    values = [int(p) for p in parts]
    step = values[1] - values[0] if len(values) > 1 else 1
    if step < 1 or values != list(range(values[0], values[-1] + 1, step)):
        raise InvalidArgumentError(
            "BAD_PARAMS",
            f"frames {frames!r} are not evenly spaced and increasing: a job renders "
            "START-END:STEP (a list like 1,3,5 is 1-5:2); render other frames as "
            "another job",
        )
    return values[0], values[-1], step


PAIR_FORMS = {"resolution": "WxH, e.g. 1920x1080", "tiles": "NxM, e.g. 4x4"}


def parse_pair(value: "str | Sequence[int] | None", what: str) -> tuple[int, int] | None:
    """(a, b) from "1920x1080" or (1920, 1080)."""
    if value is None:
        return None
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", value)
        if m is None:
            form = PAIR_FORMS.get(what, "NxM, e.g. 4x4")
            raise InvalidArgumentError("BAD_PARAMS", f"{what} {value!r} is not {form}")
        return int(m[1]), int(m[2])
    pair = tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) for v in pair):
        raise InvalidArgumentError("BAD_PARAMS", f"{what} must be two integers, got {value!r}")
    return pair[0], pair[1]


def build_params(
    info: SceneInfo | None,
    *,
    frames: "range | Sequence[int] | str | int | None",
    samples: int | None,
    resolution: "str | Sequence[int] | None",
    format: str,
    depth: int | None,
    tiles: "str | Sequence[int] | None",
    chunk: int,
) -> dict[str, Any]:
    """The job params, checked against the scene when it could be inspected."""
    fmt = format.lower().lstrip(".")
    if fmt not in FORMATS:
        raise InvalidArgumentError(
            "BAD_PARAMS", f"unknown output format {format!r}; use one of: {', '.join(FORMATS)}"
        )
    span = parse_frames(frames)
    size = parse_pair(resolution, "resolution")
    if info is not None:
        span = span or (info.frame_start, info.frame_end, info.frame_step)
        size = size or (info.width, info.height)
        samples = samples if samples is not None else info.samples
        start, end, _ = span
        if start < info.frame_start or end > info.frame_end:
            asked = f"frame {start} is" if start == end else f"frames {start}-{end} are"
            raise InvalidArgumentError(
                "BAD_FRAMES",
                f"{asked} outside the scene's frame range {info.frame_start}-"
                f"{info.frame_end}; choose frames within it, or widen the range in Blender "
                "(Output Properties > Frame Range) and save",
            )
    if span is None or size is None or samples is None:
        raise InvalidArgumentError(
            "BAD_PARAMS",
            "frames, resolution and samples are needed when bpy is not installed here to read "
            "them from the scene (pip install 'sparegrid[render]': bpy 5.0.1, CPython 3.11 only)",
        )
    params: dict[str, Any] = {
        "frame_start": span[0],
        "frame_end": span[1],
        "frame_step": span[2],
        "samples": samples,
        "resolution": list(size),
        "format": fmt,
        "depth": depth if depth is not None else FORMATS[fmt][0],
        "chunk": chunk,
    }
    tile_pair = parse_pair(tiles, "tiles")
    if tile_pair is not None:
        if span[0] != span[1]:  # the scene's range, most often: frames was left out
            whose = " (the scene's range)" if frames is None else ""
            raise InvalidArgumentError(
                "BAD_PARAMS",
                f"tiles split one still frame, got frames {span[0]}-{span[1]}{whose}; "
                f"choose the frame, e.g. frames={span[0]}",
            )
        params["tiles"] = list(tile_pair)
    return params


def stitch_tiles(tiles: Sequence[Path], out: Path, width: int, height: int) -> Path:
    """Writes the frame the tiles (named tile_xA-B_yC-D.ext, y counted from the bottom as
    Blender does) make up. PNG tiles need no Blender: their levels are copied exactly
    (sparegrid.wire.png); EXR tiles need bpy (`pip install 'sparegrid[render]'`, Python
    3.11)."""
    if not tiles:
        raise SparegridError("NO_TILES", "no tiles to stitch")
    m = TILE_NAME.search(tiles[0].name)
    if m is None:
        raise SparegridError("BAD_TILE", f"{tiles[0].name} is not a tile's name")
    fmt = m[5]
    depth = _image_depth(tiles[0], fmt)
    if fmt == "png":
        out.write_bytes(png.encode_png(_stitch_png(tiles, width, height)))
        return out
    if not have_blender():
        raise SparegridError(
            "NEEDS_BLENDER",
            f"stitching EXR tiles needs Blender's Python module: pip install 'sparegrid[render]' "
            f"(bpy, Python 3.11 only); the tiles are in {tiles[0].parent}",
        )
    _tool("stitch", str(out), fmt, str(depth), str(width), str(height), *map(str, tiles))
    return out


def _stitch_png(tiles: Sequence[Path], width: int, height: int) -> Any:
    """The frame's levels; every tile checked against its name before it is decoded, and
    the tiles must cover the frame exactly once."""
    if width * height > png.MAX_PIXELS:
        raise SparegridError("BAD_TILE", f"a {width}x{height} frame is too large to stitch")
    frame: Any = None
    covered = np.zeros((height, width), dtype=bool)
    for tile in tiles:
        m = TILE_NAME.search(tile.name)
        if m is None or m[5] != "png":
            raise SparegridError("BAD_TILE", f"{tile.name} is not a PNG tile's name")
        x0, x1, y0, y1 = (int(v) for v in m.groups()[:4])
        data = tile.read_bytes()
        try:
            header = png.png_header(data)
            if (header.width, header.height) != (x1 - x0, y1 - y0) or x1 > width or y1 > height:
                raise ValueError(f"is {header.width}x{header.height}, its name says otherwise")
            levels = png.png_levels(data)
        except ValueError as exc:
            raise SparegridError("BAD_TILE", f"{tile.name}: {exc}") from None
        if frame is None:
            frame = np.zeros((height, width, levels.shape[2]), dtype=levels.dtype)
        if levels.dtype != frame.dtype or levels.shape[2] != frame.shape[2]:
            raise SparegridError("BAD_TILE", f"{tile.name} differs in depth or channels")
        rows = slice(height - y1, height - y0)  # rows top-down, a tile's y bottom-up
        if covered[rows, x0:x1].any():
            raise SparegridError("BAD_TILE", f"{tile.name} overlaps another tile")
        frame[rows, x0:x1] = levels
        covered[rows, x0:x1] = True
    if not covered.all():
        raise SparegridError(
            "BAD_TILE", f"tiles cover {int(covered.sum())} of {width * height} pixels"
        )
    return frame


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
EXR_MAGIC = b"\x76\x2f\x31\x01"
EXR_DEPTHS = {1: 16, 2: 32}  # OpenEXR pixel types: half, float (uint is not rendered)


def _image_depth(path: Path, fmt: str) -> int:
    """Bits per channel: PNG's IHDR bit depth; OpenEXR's first channel (1 half, 2 float).
    A tile comes from a node: anything else is refused (BAD_TILE), never guessed."""
    with path.open("rb") as f:
        head = f.read(65536)
    if fmt == "png":
        if not head.startswith(PNG_SIGNATURE) or head[12:16] != b"IHDR" or len(head) < 25:
            raise SparegridError("BAD_TILE", f"{path.name} is not a PNG")
        if head[24] not in (8, 16):
            raise SparegridError("BAD_TILE", f"{path.name} is not an 8- or 16-bit PNG")
        return head[24]
    at = head.find(b"channels\x00chlist\x00") if head.startswith(EXR_MAGIC) else -1
    if at < 0:
        raise SparegridError("BAD_TILE", f"{path.name} has no OpenEXR channel list")
    name_end = head.find(b"\x00", at + 16 + 4)  # after the tag and the size
    pixel_type = int.from_bytes(head[name_end + 1 : name_end + 5], "little", signed=True)
    if name_end < 0 or pixel_type not in EXR_DEPTHS:
        raise SparegridError(
            "BAD_TILE", f"{path.name}'s first OpenEXR channel is not half or float"
        )
    return EXR_DEPTHS[pixel_type]


def frame_size(tiles: Sequence[Path]) -> tuple[int, int]:
    """The full frame's size: the right and top edges of the tiles."""
    boxes = [TILE_NAME.search(t.name) for t in tiles]
    return max(int(b[2]) for b in boxes if b), max(int(b[4]) for b in boxes if b)


@contextlib.contextmanager
def prepare(
    blend: Path,
    *,
    frames: "range | Sequence[int] | str | int | None",
    samples: int | None,
    resolution: "str | Sequence[int] | None",
    format: str,
    depth: int | None,
    tiles: "str | Sequence[int] | None",
    chunk: int,
) -> Iterator[tuple[Path, dict[str, Any]]]:
    """(file to upload, job params): checked, and packed when the scene needs it."""
    check_blend_file(blend)
    info = inspect_scene(blend) if have_blender() else None
    if info is not None and info.missing:
        raise missing_files_error(blend, info.missing)
    if info is not None and info.unpackable:
        raise unpackable_error(blend, info.unpackable)
    if info is not None and not info.camera:
        raise InvalidArgumentError(
            "BAD_INPUT", f"{blend}'s scene has no active camera, so it cannot render"
        )
    params = build_params(
        info,
        frames=frames,
        samples=samples,
        resolution=resolution,
        format=format,
        depth=depth,
        tiles=tiles,
        chunk=chunk,
    )
    with packed(blend, info) as path:
        yield path, params


def requirements_software(blender: str | None, backend: str | None = None) -> dict[str, str]:
    """{"blender": "major.minor"} when the job must run on that Blender version, plus
    {"cycles-optix": ...} (cuda, cpu) when it must run where Cycles can use that backend."""
    if not blender:
        if backend:
            raise InvalidArgumentError(
                "BAD_PARAMS",
                f"backend {backend!r} needs a Blender version too, e.g. blender=5.0",
            )
        return {}
    m = re.fullmatch(r"(\d+)\.(\d+)(?:\.\d+)?", blender.strip())
    if m is None:
        raise InvalidArgumentError("BAD_PARAMS", f"blender version {blender!r} is not like 5.0")
    version = f"{m[1]}.{m[2]}"
    software = {"blender": version}
    if backend:
        if backend.lower() not in BACKENDS:
            raise InvalidArgumentError(
                "BAD_PARAMS", f"unknown backend {backend!r}; use one of: {', '.join(BACKENDS)}"
            )
        software[f"cycles-{backend.lower()}"] = version
    return software


def frame_number(name: str) -> int | None:
    m = FRAME_NAME.fullmatch(name)
    return int(m[1]) if m else None


def latest_frame_ref(results: "Sequence[Any]") -> tuple[Any, str] | None:
    """(result, output name) of the highest-numbered frame among finished tasks."""
    best: tuple[int, Any, str] | None = None
    for result in results:
        if result.state.value != "succeeded":
            continue
        for ref in result.outputs:
            number = frame_number(ref.name)
            if number is not None and (best is None or number > best[0]):
                best = (number, result, ref.name)
    return (best[1], best[2]) if best else None
