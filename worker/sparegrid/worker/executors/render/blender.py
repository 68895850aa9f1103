"""Blender inside the per-device child: open a .blend with all of its Python disabled, render.

Only this module touches `bpy`, and only when a render task arrives (importing it takes
about half a second). The rules, all applied before the first frame:

- factory settings, no user profile: BLENDER_USER_* point at an empty private directory;
- the file is opened with `use_scripts=False` (no auto-run text blocks, so nothing of the
  file's registers a handler) and every driver whose expression is Python rather than a simple expression is
  removed, so not even Blender's restricted driver evaluator runs the file's Python;
- nothing is read from or written to the volunteer's disk on the file's behalf: a file
  that would read one is refused, naming each path (`sparegrid.wire.blendrefs`: nodes
  that import files, unpacked images, libraries, volumes, caches, fonts, IES profiles,
  bakes on disk ...; clients pack what can be packed), compositor File Output nodes are
  muted, the video sequencer and OSL script nodes are off.
"""

import ctypes.util
import functools
import importlib
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sparegrid.wire.blendrefs import external_references
from sparegrid.worker.executors.base import BAD_INPUT, ExecutorError

GPU_BACKENDS = ("OPTIX", "CUDA", "HIP")  # preferred first; CPU when none has a device
_find_library = functools.cache(ctypes.util.find_library)  # runs ldconfig: once per name


def load_bpy(home: Path) -> Any:
    """Imports bpy with a private, empty user profile, then resets to factory settings."""
    home.mkdir(parents=True, exist_ok=True)
    for var in (
        "BLENDER_USER_CONFIG",
        "BLENDER_USER_SCRIPTS",
        "BLENDER_USER_DATAFILES",
        "BLENDER_USER_EXTENSIONS",  # else ~/.config/blender/VERSION/extensions/.cache
    ):
        os.environ[var] = str(home)
    os.environ["XDG_CACHE_HOME"] = str(home / "cache")  # else ~/.cache/thumbnails
    os.environ.pop("BLENDER_SYSTEM_SCRIPTS", None)
    bpy = importlib.import_module("bpy")
    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.context.preferences.filepaths.use_scripts_auto_execute = False
    return bpy


def cycles_backends(
    blender_version: str,
    device_kinds: Iterable[str],
    find_library: Callable[[str], str | None] | None = None,
) -> dict[str, str]:
    """The Cycles backends this node's slots can use, as software entries for the Hello:
    "cycles-cpu", and on a node with CUDA devices "cycles-cuda" and, with the driver's
    OptiX library, "cycles-optix" (each: the Blender version). Found without importing
    bpy; the child confirms with Cycles itself and falls back in choose_backend's order."""
    find_library = find_library or _find_library
    backends = ["cpu"]
    if "cuda" in set(device_kinds) and find_library("cuda"):
        backends.append("cuda")
        if find_library("nvoptix"):
            backends.append("optix")
    return {f"cycles-{name}": blender_version for name in backends}


def choose_backend(bpy: Any, device_kind: str) -> str:
    """OptiX, then CUDA, then HIP on a GPU slot; the CPU on a CPU slot or when none works."""
    prefs = bpy.context.preferences.addons["cycles"].preferences
    if device_kind != "cpu":
        for backend in GPU_BACKENDS:
            try:
                prefs.compute_device_type = backend
                devices = prefs.get_devices_for_type(backend)
            except (TypeError, ValueError, RuntimeError):
                continue
            usable = [d for d in devices if d.type == backend]
            if usable:
                for d in prefs.devices:
                    d.use = d.type == backend
                return backend
    prefs.compute_device_type = "NONE"
    return "CPU"


@dataclass
class OpenScene:
    path: Path
    scene: Any
    removed_drivers: int
    dither: float  # the file's own settings, restored for untiled frames
    denoise: bool


def open_scene(bpy: Any, path: Path) -> OpenScene:
    """Opens a .blend without running any of its Python; refuses what would read a file."""
    bpy.context.preferences.filepaths.use_scripts_auto_execute = False
    missing: list[str] = []
    check = _check_before_evaluation(bpy, missing)
    bpy.app.handlers.load_post.append(check)
    try:
        bpy.ops.wm.open_mainfile(filepath=str(path), load_ui=False, use_scripts=False)
    except RuntimeError as exc:
        raise ExecutorError(BAD_INPUT, f"Blender cannot open the scene: {exc}") from None
    finally:
        bpy.app.handlers.load_post.remove(check)
    bpy.app.driver_namespace.clear()
    removed = _remove_python_drivers(bpy)
    if missing:
        more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        shown = ", ".join(missing[:10]) + more
        raise ExecutorError(
            BAD_INPUT,
            f"the scene would read files that are not packed into it, from the volunteer's "
            f"disk: {shown}",
        )
    for tree in _node_trees(bpy):
        for node in tree.nodes:
            if node.bl_idname == "CompositorNodeOutputFile":
                node.mute = True
    scene = bpy.context.scene
    scene.render.use_sequencer = False
    scene.cycles.shading_system = False  # no OSL script nodes
    return OpenScene(
        path, scene, removed, scene.render.dither_intensity, scene.cycles.use_denoising
    )


def _check_before_evaluation(bpy: Any, found: list[str]) -> Callable[..., None]:
    """A load_post handler: Blender evaluates the scene right after it (Geometry Nodes
    importers, mesh caches and volumes read their files then), so the scene is checked
    here, and a refused one is left with no object to evaluate."""

    @bpy.app.handlers.persistent  # type: ignore[untyped-decorator]
    def check(*_args: Any) -> None:
        found.extend(external_files(bpy))
        if found:
            for block in list(bpy.data.objects):
                bpy.data.objects.remove(block)

    return check  # type: ignore[no-any-return]


def _ids(bpy: Any) -> Iterator[Any]:
    for name in dir(bpy.data):
        collection = getattr(bpy.data, name, None)
        if collection is None or name == "window_managers":
            continue
        if type(collection).__name__ != "bpy_prop_collection":
            continue
        for id_block in collection:
            yield id_block
            tree = getattr(id_block, "node_tree", None)
            if tree is not None:
                yield tree  # embedded in materials, worlds, lights


def _node_trees(bpy: Any) -> Iterator[Any]:
    yield from bpy.data.node_groups
    for collection in (bpy.data.materials, bpy.data.worlds, bpy.data.lights, bpy.data.scenes):
        for owner in collection:
            tree = getattr(owner, "node_tree", None) or getattr(
                owner, "compositing_node_group", None
            )
            if tree is not None:
                yield tree


def _remove_python_drivers(bpy: Any) -> int:
    removed = 0
    for id_block in _ids(bpy):
        anim = getattr(id_block, "animation_data", None)
        if anim is None:
            continue
        for fcurve in list(anim.drivers):
            driver = fcurve.driver
            if driver.type == "SCRIPTED" and not driver.is_simple_expression:
                anim.drivers.remove(fcurve)
                removed += 1
    return removed


def external_files(bpy: Any) -> list[str]:
    """What the open scene would read from disk (see `sparegrid.wire.blendrefs`)."""
    return [ref.describe() for ref in external_references(bpy)]


@dataclass(frozen=True)
class FrameSettings:
    samples: int
    width: int
    height: int
    fmt: str  # "png" or "exr"
    depth: int
    border: tuple[int, int, int, int] | None  # pixels x0, x1, y0, y1 (y from the bottom)
    # A spot check's crop of a whole frame: rendered as that frame was (its denoiser),
    # rather than as a tile of a tiled still (no denoiser)
    as_frame: bool = False


def configure(opened: OpenScene, s: FrameSettings) -> None:
    """Sets everything a task decides, every time: the open scene is reused across tasks.

    Whole frames keep the scene's dither and denoiser. Tiles of a tiled still are rendered
    without either: the denoiser needs the whole frame and dither noise would differ at
    the seams. A spot check's crop of a whole frame keeps the denoiser (the coordinator
    asks for a margin around the pixels it compares, so that the denoiser sees about what
    it saw in the frame) and drops dither: Blender's dither noise depends on where a pixel
    sits in the image written, so a crop's could never match the frame's, and without it
    an honest crop is at most one level per unit of dither off the frame."""
    scene = opened.scene
    render = scene.render
    render.engine = "CYCLES"
    render.resolution_x, render.resolution_y = s.width, s.height
    render.resolution_percentage = 100
    render.use_persistent_data = True  # keeps the BVH and kernels between frames
    render.use_file_extension = True
    # No metadata in the files (date, render time, this node's host name and paths): it
    # would tell the client about the volunteer's machine, and make honest replicas of a
    # frame differ byte for byte.
    for flag in [a for a in dir(render) if a.startswith("use_stamp")]:
        setattr(render, flag, False)
    scene.cycles.samples = s.samples
    scene.cycles.time_limit = 0.0
    render.use_border = s.border is not None
    render.use_crop_to_border = s.border is not None
    render.dither_intensity = opened.dither
    scene.cycles.use_denoising = opened.denoise
    # One denoiser on every node: OptiX's (GPU only) is another network altogether, and
    # Open Image Denoise on a GPU does not compute exactly as it does on the CPU.
    scene.cycles.denoiser = "OPENIMAGEDENOISE"
    scene.cycles.denoising_use_gpu = False
    if s.border is not None:
        x0, x1, y0, y1 = s.border
        render.border_min_x, render.border_max_x = _edge(x0, s.width), _edge(x1, s.width)
        render.border_min_y, render.border_max_y = _edge(y0, s.height), _edge(y1, s.height)
        render.dither_intensity = 0.0
        if not s.as_frame:
            scene.cycles.use_denoising = False
    image = render.image_settings
    image.file_format = "PNG" if s.fmt == "png" else "OPEN_EXR"
    image.color_mode = "RGBA"
    image.color_depth = str(s.depth)
    if s.fmt == "exr":
        image.exr_codec = "ZIP"


def _edge(pixel: int, size: int) -> float:
    """A border edge as the fraction Blender stores. Blender and Cycles turn it back into
    a pixel by truncating `fraction * size` in single precision, and the exact fraction
    can land a hair below: 113/180 gives row 112 and a crop one row too tall. Half a pixel
    more truncates to the pixel meant, for every size up to Blender's largest."""
    return min(1.0, (pixel + 0.5) / size)


def render_frame(bpy: Any, scene: Any, frame: int, out: Path) -> Path:
    """Renders one frame to `out` + extension; returns the file written."""
    scene.frame_set(frame)
    scene.render.filepath = str(out)
    try:
        bpy.ops.render.render(write_still=True, scene=scene.name)
    except RuntimeError as exc:  # e.g. no camera: the scene, not the node, is at fault
        raise ExecutorError(BAD_INPUT, f"Blender could not render frame {frame}: {exc}") from None
    ext = ".png" if scene.render.image_settings.file_format == "PNG" else ".exr"
    written = out.with_name(out.name + ext)
    if not written.is_file():
        raise ExecutorError("EXECUTOR_ERROR", f"Blender wrote no image for frame {frame}", True)
    return written
