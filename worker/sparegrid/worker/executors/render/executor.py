"""The `render` executor: Blender Cycles frames or tiles, in the device's child process.

The child keeps one instance for its life, so Blender stays imported and the last scene
stays open: the frames of one .blend (the same content-addressed input) pay Blender's
start-up and the file load once, and Cycles keeps its kernels and BVH between them.

Importing this module does not import bpy, but fails (ImportError) when bpy is not
installed: the worker then skips the executor and does not offer render jobs.
"""

import importlib.util
import json
import os
import sys
import threading
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar

from sparegrid.wire.render import CHECK_SETTINGS, output_name
from sparegrid.worker.executors.base import BAD_PARAMS, ExecOutput, ExecTask, ExecutorError
from sparegrid.worker.executors.params import check_inputs, load_params

if importlib.util.find_spec("bpy") is None:
    raise ImportError(
        "bpy (Blender as a Python module) is not installed, so this node takes no render "
        "jobs; to take them, install sparegrid[render] (bpy 5.0.1, CPython 3.11 only), e.g. "
        "pipx install --python python3.11 'sparegrid[worker,render]'"
    )

BLENDER_VERSION = metadata.version("bpy")
MEMORY_ENV = "SPAREGRID_RENDER_MAX_MEMORY_MB"
MEMORY_EXIT = 75  # the child exits with it when a render passes the memory limit
_KEYS = ("frames", "tile", "crop", "samples", "resolution", "format", "depth")
_DEPTHS = {"png": (8, 16), "exr": (16, 32)}


def _ints(value: Any, count: int, low: int, high: int) -> bool:
    return (
        isinstance(value, list)
        and len(value) == count
        and all(isinstance(v, int) and not isinstance(v, bool) and low <= v <= high for v in value)
    )


def parse(raw: bytes) -> tuple[list[int], Any]:
    """(frames, FrameSettings) from a task's params; ExecutorError(BAD_PARAMS) if malformed."""
    from sparegrid.worker.executors.render.blender import FrameSettings

    p = load_params(raw, "render", _KEYS)
    frames, tile = p.get("frames"), p.get("tile")
    if not isinstance(frames, list) or not frames or not _ints(frames, len(frames), 0, 1 << 20):
        raise ExecutorError(BAD_PARAMS, f"render 'frames' must be a list of frames, got {frames!r}")
    if not _ints(p.get("resolution"), 2, 1, 65536):
        raise ExecutorError(BAD_PARAMS, "render 'resolution' must be [width, height]")
    if not _ints([p.get("samples")], 1, 1, 1 << 24):
        raise ExecutorError(BAD_PARAMS, "render 'samples' must be a positive integer")
    fmt, depth = p.get("format"), p.get("depth")
    if fmt not in _DEPTHS or depth not in _DEPTHS[fmt]:
        raise ExecutorError(BAD_PARAMS, f"render format {fmt!r} at depth {depth!r} is unknown")
    width, height = p["resolution"]
    border = None
    if tile is not None:
        if not _ints(tile, 4, 0, 65536) or not (
            tile[0] < tile[1] <= width and tile[2] < tile[3] <= height
        ):
            raise ExecutorError(BAD_PARAMS, f"render 'tile' {tile!r} is not a box in the frame")
        border = (tile[0], tile[1], tile[2], tile[3])
    crop = p.get("crop")
    if crop is not None and (
        border is None
        or not _ints(crop, 4, 0, 65536)
        or not (border[0] <= crop[0] < crop[1] <= border[1])
        or not (border[2] <= crop[2] < crop[3] <= border[3])
    ):
        raise ExecutorError(BAD_PARAMS, f"render 'crop' {crop!r} is not a box in the 'tile'")
    # a spot check's crop of a whole frame (the pixels compared, inside the box rendered)
    as_frame = crop is not None
    return frames, FrameSettings(p["samples"], width, height, fmt, depth, border, as_frame)


class MemoryGuard:
    """Ends the child when its resident memory passes a limit: the runner reports the task
    as crashed and it is retried elsewhere. RSS is read from /proc while a render runs."""

    def __init__(self, limit_bytes: int, interval: float = 0.2) -> None:
        self.limit = limit_bytes
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def from_env(cls) -> "MemoryGuard | None":
        value = os.environ.get(MEMORY_ENV, "")
        return cls(int(value) << 20) if value.isdigit() and int(value) > 0 else None

    def __enter__(self) -> "MemoryGuard":
        self._stop.clear()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _watch(self) -> None:
        page = os.sysconf("SC_PAGE_SIZE")
        while True:  # checks at once, then every interval, until the render ends
            with open("/proc/self/statm") as f:
                rss = int(f.read().split()[1]) * page
            if rss > self.limit:
                print(
                    f"sparegrid render: {rss >> 20} MiB resident is over the node's limit of "
                    f"{self.limit >> 20} MiB ({MEMORY_ENV}); stopping",
                    file=sys.stderr,
                    flush=True,
                )
                os._exit(MEMORY_EXIT)
            if self._stop.wait(self.interval):
                return


class RenderExecutor:
    """params {frames, tile, crop, samples, resolution, format, depth}, input "scene"
    (.blend): one output per frame, "frame_NNNN.<fmt>", or one "tile_x..._y....<fmt>" per
    tile; a spot check's crop of a whole frame ("crop" given) adds CHECK_SETTINGS."""

    name: ClassVar[str] = "render"
    version: ClassVar[str] = f"1.0+blender{BLENDER_VERSION}"

    def __init__(self) -> None:
        self._bpy: Any = None
        self._opened: Any = None
        self.backend = ""
        self.loads = 0  # how many times a .blend was opened (the warm path opens it once)

    def run(self, task: ExecTask) -> list[ExecOutput]:
        from sparegrid.worker.executors.render import blender

        frames, settings = parse(task.params)
        check_inputs(task.inputs, "render", ("scene",))
        if self._bpy is None:
            self._bpy = blender.load_bpy(task.workdir.parent / "blender-home")
            self.backend = blender.choose_backend(self._bpy, task.device.kind)
        scene_path = Path(task.inputs["scene"])
        if self._opened is None or self._opened.path != scene_path:
            self._opened = None
            self._opened = blender.open_scene(self._bpy, scene_path)
            self.loads += 1
        blender.configure(self._opened, settings)
        self._opened.scene.cycles.device = "CPU" if self.backend == "CPU" else "GPU"
        outputs = []
        guard = MemoryGuard.from_env()
        for frame in frames:
            name = output_name(frame, settings.border, settings.fmt)
            stem = task.workdir / name.rsplit(".", 1)[0]
            if guard is not None:
                with guard:
                    path = blender.render_frame(self._bpy, self._opened.scene, frame, stem)
            else:
                path = blender.render_frame(self._bpy, self._opened.scene, frame, stem)
            data = path.read_bytes()
            check_size(data, settings)
            outputs.append(
                ExecOutput(name, zero_exr_times(data) if name.endswith(".exr") else data)
            )
        if settings.as_frame:
            scene = {"denoise": bool(self._opened.denoise), "dither": float(self._opened.dither)}
            outputs.append(ExecOutput(CHECK_SETTINGS, json.dumps(scene, sort_keys=True).encode()))
        return outputs


def check_size(data: bytes, settings: Any) -> None:
    """A PNG written must be the size of the box asked for: a crop a row too tall (as
    Blender's rounding of a border once made) fails here, not as a disagreement."""
    if not data.startswith(b"\x89PNG\r\n\x1a\n") or len(data) < 24:
        return
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if settings.border is None:
        wanted = settings.width, settings.height
    else:
        x0, x1, y0, y1 = settings.border
        wanted = x1 - x0, y1 - y0
    if (width, height) != wanted:
        raise ExecutorError(
            "EXECUTOR_ERROR",
            f"Blender wrote a {width}x{height} image for a {wanted[0]}x{wanted[1]} box",
            True,
        )


def zero_exr_times(data: bytes) -> bytes:
    """The EXR with its timing attributes (Cycles' `cycles.<layer>.render_time` and the
    like, written whatever the stamp settings) set to zero digits, in place: honest
    replicas of a frame then match byte for byte, and sizes and offsets stay as they are."""
    out = bytearray(data)
    pos = 8  # magic number and version
    while pos < len(out) and out[pos] != 0:
        name_end = out.index(0, pos)
        type_end = out.index(0, name_end + 1)
        size = int.from_bytes(out[type_end + 1 : type_end + 5], "little")
        start = type_end + 5
        name, kind = bytes(out[pos:name_end]), bytes(out[name_end + 1 : type_end])
        if kind == b"string" and name.lower().endswith(b"time"):
            value = out[start : start + size]
            out[start : start + size] = bytes(48 if 48 <= c <= 57 else c for c in value)
        pos = start + size
    return bytes(out)
