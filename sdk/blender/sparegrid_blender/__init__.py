"""Sparegrid Render: a panel in Render properties that renders the open scene on a Sparegrid
network, through the sparegrid SDK (bundled as wheels by `scripts/build-addon`).

The coordinator and API key live in the extension's preferences (never in the .blend,
which is uploaded), else in SPAREGRID_COORDINATOR and SPAREGRID_API_KEY. Submit saves a
copy of the scene and hands it to the SDK, which checks and packs it exactly as
`sparegrid job submit render` does (missing or unpackable files are refused before
anything is charged). While a job runs, a timer refreshes its progress every few seconds
and loads its latest finished frame as a preview; Fetch writes the frames (only those not
fetched yet, digest-checked) into the output folder.
"""

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bpy
from bpy.props import EnumProperty, FloatProperty, IntProperty, PointerProperty, StringProperty

PREVIEW = "Sparegrid preview"
REFRESH_SECONDS = 3.0
_copies: list[Path] = [Path("/nonexistent")]  # the last copy of the scene made to submit


class SparegridPreferences(bpy.types.AddonPreferences):
    bl_idname = __package__

    coordinator: StringProperty(  # type: ignore[valid-type]
        name="Coordinator", description="HOST:PORT of the coordinator", default=""
    )
    api_key: StringProperty(  # type: ignore[valid-type]
        name="API key",
        description="your account's key (kept here, not in .blend files)",
        subtype="PASSWORD",
        default="",
    )

    def draw(self, context: Any) -> None:
        self.layout.prop(self, "coordinator")
        self.layout.prop(self, "api_key")


class SparegridSettings(bpy.types.PropertyGroup):
    """What to render (0: the scene's own value) and the job it became."""

    frame_start: IntProperty(name="Start", default=0, min=0)  # type: ignore[valid-type]
    frame_end: IntProperty(name="End", default=0, min=0)  # type: ignore[valid-type]
    samples: IntProperty(name="Samples", default=0, min=0, max=1 << 20)  # type: ignore[valid-type]
    resolution_x: IntProperty(name="Width", default=0, min=0, max=65536)  # type: ignore[valid-type]
    resolution_y: IntProperty(name="Height", default=0, min=0, max=65536)  # type: ignore[valid-type]
    tiles_x: IntProperty(name="Tiles X", default=1, min=1, max=64)  # type: ignore[valid-type]
    tiles_y: IntProperty(name="Tiles Y", default=1, min=1, max=64)  # type: ignore[valid-type]
    file_format: EnumProperty(  # type: ignore[valid-type]
        name="Format", items=[("png", "PNG", ""), ("exr", "OpenEXR", "")], default="png"
    )
    output_dir: StringProperty(  # type: ignore[valid-type]
        name="Folder", subtype="DIR_PATH", default="//sparegrid/"
    )
    estimate: StringProperty(name="Estimate", default="")  # type: ignore[valid-type]
    job_id: StringProperty(name="Job", default="")  # type: ignore[valid-type]
    state: StringProperty(name="State", default="")  # type: ignore[valid-type]
    progress: FloatProperty(  # type: ignore[valid-type]
        name="Progress", subtype="PERCENTAGE", min=0.0, max=100.0, default=0.0
    )
    eta: StringProperty(name="ETA", default="")  # type: ignore[valid-type]
    preview_frame: StringProperty(name="Preview", default="")  # type: ignore[valid-type]
    fetched: StringProperty(name="Fetched", default="")  # type: ignore[valid-type]
    message: StringProperty(name="Message", default="")  # type: ignore[valid-type]


# --- the SDK side ---------------------------------------------------------------------------


def connection(context: Any) -> tuple[str | None, str | None]:
    addon = context.preferences.addons.get(__package__)
    prefs = addon.preferences if addon is not None else None
    address = (prefs.coordinator if prefs else "") or os.environ.get("SPAREGRID_COORDINATOR")
    key = (prefs.api_key if prefs else "") or os.environ.get("SPAREGRID_API_KEY")
    return address or None, key or None


def client(context: Any) -> Any:
    from sparegrid.sdk import Client

    address, key = connection(context)
    return Client(address, api_key=key)


def render_args(scene: Any) -> dict[str, Any]:
    """The SDK's render arguments from the panel, the scene's own values where 0."""
    s = scene.sparegrid
    percent = scene.render.resolution_percentage  # Blender's size: rounded down, as here
    width = s.resolution_x or scene.render.resolution_x * percent // 100
    height = s.resolution_y or scene.render.resolution_y * percent // 100
    tiled = s.tiles_x * s.tiles_y > 1
    start = s.frame_start or scene.frame_start
    end = s.frame_end or scene.frame_end
    step = max(1, scene.frame_step)  # Render Animation renders every Nth frame: so does this
    samples = s.samples or getattr(getattr(scene, "cycles", None), "samples", 0) or None
    return {
        "frames": f"{scene.frame_current}" if tiled else f"{start}-{end}:{step}",
        "samples": samples,
        "resolution": (width, height),
        "format": s.file_format,
        "tiles": (s.tiles_x, s.tiles_y) if tiled else None,
    }


@contextlib.contextmanager
def scene_copy() -> Iterator[Path]:
    """A copy of the open scene as saved now (the open file is left as it is); the SDK
    checks and packs it."""
    folder = Path(tempfile.mkdtemp(prefix="sparegrid-scene-"))
    name = Path(bpy.data.filepath).name or "scene.blend"
    path = folder / name
    _copies[:] = [path]
    try:
        bpy.ops.wm.save_as_mainfile(filepath=str(path), copy=True, compress=True)
        yield path
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def estimate_text(found: Any) -> str:
    text = (
        f"{found.tasks} task(s), {found.credit_per_pass} credit a pass, up to "
        f"{found.max_held} held ({found.policy}); balance {found.balance}"
    )
    return text if found.affordable else text + ": NOT ENOUGH CREDIT"


def show_preview(job: Any, settings: Any) -> None:
    """Loads the job's latest finished frame into the image PREVIEW."""
    found = job.preview()
    if found is None or found[0] == settings.preview_frame:
        return
    name, data = found
    folder = Path(tempfile.gettempdir()) / "sparegrid-preview"
    folder.mkdir(exist_ok=True)
    path = folder / f"{job.id}-{name}"
    path.write_bytes(data)
    image = bpy.data.images.get(PREVIEW)
    if image is None:
        image = bpy.data.images.load(str(path))
        image.name = PREVIEW
    else:
        image.filepath = str(path)
        image.reload()
    with contextlib.suppress(Exception):  # no previews without a UI
        image.preview_ensure()
    settings.preview_frame = name


def refresh(context: Any) -> bool:
    """Updates the panel from the job; True while it runs."""
    s = context.scene.sparegrid
    if not s.job_id:
        return False
    with client(context) as c:
        job = c.get_job(s.job_id)
        counts = job.counts
        s.state = job.state.value + (f": {job.error}" if job.error else "")
        s.progress = 100.0 * counts.done / counts.total if counts.total else 0.0
        left = job.eta
        s.eta = "" if left is None else f"{int(left // 60)}m{int(left % 60):02d}s"
        if counts.succeeded:
            show_preview(job, s)
    return not job.finished


def _timer() -> float | None:
    context = bpy.context
    try:
        running = refresh(context)
    except Exception as exc:  # a timer must not raise; the panel says what went wrong
        context.scene.sparegrid.message = str(exc)
        return None
    for area in getattr(context.screen, "areas", []):
        area.tag_redraw()
    return REFRESH_SECONDS if running else None


def _follow() -> None:
    if not bpy.app.background and not bpy.app.timers.is_registered(_timer):
        bpy.app.timers.register(_timer, first_interval=REFRESH_SECONDS)


# --- operators -------------------------------------------------------------------------------


class _SparegridOperator(bpy.types.Operator):
    def execute(self, context: Any) -> set[str]:
        from sparegrid.sdk import SparegridError

        settings = context.scene.sparegrid
        settings.message = ""
        try:
            self.run(context)
        except SparegridError as exc:
            # name the open file, not the copy that was checked
            message = exc.message.replace(str(_copies[-1]), bpy.data.filepath or "the scene")
            settings.message = f"{message} [{exc.code}]"
            self.report({"ERROR"}, settings.message)
            return {"CANCELLED"}
        return {"FINISHED"}

    def run(self, context: Any) -> None:
        raise NotImplementedError


class SPAREGRID_OT_estimate(_SparegridOperator):
    bl_idname = "sparegrid.estimate"
    bl_label = "Estimate cost"
    bl_description = "What the render would cost; nothing is submitted"

    def run(self, context: Any) -> None:
        with scene_copy() as path, client(context) as c:
            found = c.render_estimate(path, **render_args(context.scene))
        context.scene.sparegrid.estimate = estimate_text(found)


class SPAREGRID_OT_submit(_SparegridOperator):
    bl_idname = "sparegrid.submit"
    bl_label = "Submit"
    bl_description = "Save a copy of the scene and render it on the network"

    def run(self, context: Any) -> None:
        s = context.scene.sparegrid
        with scene_copy() as path, client(context) as c:
            job = c.render(path, **render_args(context.scene), name=Path(path).stem)
        s.job_id, s.state, s.progress, s.eta = job.id, job.state.value, 0.0, ""
        s.preview_frame = s.fetched = ""
        self.report({"INFO"}, f"submitted job {job.id}: {job.counts.total} task(s)")
        _follow()


class SPAREGRID_OT_refresh(_SparegridOperator):
    bl_idname = "sparegrid.refresh"
    bl_label = "Refresh"
    bl_description = "Read the job's progress and its latest frame now"

    def run(self, context: Any) -> None:
        if refresh(context):
            _follow()


class SPAREGRID_OT_fetch(_SparegridOperator):
    bl_idname = "sparegrid.fetch"
    bl_label = "Fetch results"
    bl_description = "Write the frames finished so far into the folder (only new ones)"

    def run(self, context: Any) -> None:
        from sparegrid.cli.fetch import check_continue_dir, fetch_new, write_index
        from sparegrid.sdk.resultfiles import stitch_still

        s = context.scene.sparegrid
        out = Path(bpy.path.abspath(s.output_dir))
        with client(context) as c:
            job = c.get_job(s.job_id)
            check_continue_dir(out, job.id, force=False)
            out.mkdir(parents=True, exist_ok=True)
            done = fetch_new(c, job, c.results(job.id), out)
            if (
                done.tiles
                and job.finished
                and done.entries
                and all(e["state"] == "succeeded" for e in done.entries)
            ):
                stitch_still(done.tiles, out)
            write_index(out, job, done.entries)
        s.fetched = f"{done.new} new, {done.kept} already in {out}"
        self.report({"INFO"}, s.fetched)


class SPAREGRID_OT_cancel(_SparegridOperator):
    bl_idname = "sparegrid.cancel"
    bl_label = "Cancel job"

    def run(self, context: Any) -> None:
        s = context.scene.sparegrid
        with client(context) as c:
            s.state = c.cancel(s.job_id).state.value


# --- the panel -------------------------------------------------------------------------------


class SPAREGRID_PT_render(bpy.types.Panel):
    bl_label = "Sparegrid"
    bl_space_type = "PROPERTIES"
    bl_region_type = "WINDOW"
    bl_context = "render"

    def draw(self, context: Any) -> None:
        layout, s = self.layout, context.scene.sparegrid
        address, key = connection(context)
        if not address or not key:
            layout.label(
                text="Set the coordinator and API key in the extension's preferences", icon="ERROR"
            )
        col = layout.column(align=True)
        row = col.row(align=True)
        row.prop(s, "frame_start")
        row.prop(s, "frame_end")
        col.prop(s, "samples")
        row = col.row(align=True)
        row.prop(s, "resolution_x")
        row.prop(s, "resolution_y")
        row = col.row(align=True)
        row.prop(s, "tiles_x")
        row.prop(s, "tiles_y")
        col.prop(s, "file_format")
        layout.label(text="0 means the scene's own value; tiles render the current frame")
        row = layout.row()
        row.operator(SPAREGRID_OT_estimate.bl_idname)
        row.operator(SPAREGRID_OT_submit.bl_idname, icon="RENDER_ANIMATION")
        if s.estimate:
            layout.label(text=s.estimate)
        if s.job_id:
            box = layout.box()
            box.label(text=f"job {s.job_id[:12]}: {s.state}")
            box.prop(s, "progress", slider=True)
            if s.eta:
                box.label(text=f"time left: {s.eta}")
            image = bpy.data.images.get(PREVIEW)
            if image is not None and image.preview is not None:
                box.label(text=s.preview_frame)
                box.template_icon(icon_value=image.preview.icon_id, scale=8.0)
            row = box.row()
            row.operator(SPAREGRID_OT_refresh.bl_idname, icon="FILE_REFRESH")
            row.operator(SPAREGRID_OT_cancel.bl_idname, icon="CANCEL")
            box.prop(s, "output_dir")
            box.operator(SPAREGRID_OT_fetch.bl_idname, icon="IMPORT")
            if s.fetched:
                box.label(text=s.fetched)
        if s.message:
            layout.label(text=s.message, icon="ERROR")


CLASSES = (
    SparegridPreferences,
    SparegridSettings,
    SPAREGRID_OT_estimate,
    SPAREGRID_OT_submit,
    SPAREGRID_OT_refresh,
    SPAREGRID_OT_fetch,
    SPAREGRID_OT_cancel,
    SPAREGRID_PT_render,
)


def register() -> None:
    for cls in CLASSES:
        bpy.utils.register_class(cls)
    bpy.types.Scene.sparegrid = PointerProperty(type=SparegridSettings)


def unregister() -> None:
    if bpy.app.timers.is_registered(_timer):
        bpy.app.timers.unregister(_timer)
    del bpy.types.Scene.sparegrid
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
