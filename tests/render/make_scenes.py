"""Writes the test scenes with bpy (run in a subprocess: `python make_scenes.py OUT_DIR`).

Tiny on purpose: 48x36 pixels, 4 samples, no denoiser, no dither, so a frame renders in
a fraction of a second on one core and renders are deterministic; except default.blend,
Blender's default scene with its denoiser and dither, for the frame checks.
"""

import sys
from pathlib import Path

import bpy


def base(frames: int = 6) -> None:
    bpy.ops.wm.read_factory_settings(use_empty=False)
    scene = bpy.context.scene
    scene.render.engine = "CYCLES"
    scene.cycles.samples = 4
    scene.cycles.use_denoising = False
    scene.cycles.use_adaptive_sampling = False
    scene.render.dither_intensity = 0.0
    scene.render.resolution_x, scene.render.resolution_y = 48, 36
    scene.render.resolution_percentage = 100
    scene.frame_start, scene.frame_end = 1, frames
    cube = bpy.data.objects["Cube"]
    cube.location = (0.0, 0.0, 0.0)
    cube.keyframe_insert("location", frame=1)
    cube.location = (1.5, 0.0, 0.5)
    cube.keyframe_insert("location", frame=frames)


def save(path: Path) -> None:
    bpy.ops.wm.save_as_mainfile(filepath=str(path), compress=True)


def textured(image_path: Path) -> None:
    material = bpy.data.materials.new("textured")
    material.use_nodes = True
    tree = material.node_tree
    tex = tree.nodes.new("ShaderNodeTexImage")
    tex.image = bpy.data.images.load(str(image_path), check_existing=False)
    bsdf = tree.nodes["Principled BSDF"]
    tree.links.new(tex.outputs["Color"], bsdf.inputs["Base Color"])
    bpy.data.objects["Cube"].data.materials.append(material)


def blender_default(frames: int = 6) -> None:
    """Blender's default scene as it comes: Cycles denoises and dithers (intensity 1),
    which is how most scenes reach the grid; the cube moves."""
    bpy.ops.wm.read_factory_settings(use_empty=False)
    scene = bpy.context.scene
    scene.render.engine = "CYCLES"
    scene.frame_start, scene.frame_end = 1, frames
    cube = bpy.data.objects["Cube"]
    cube.keyframe_insert("location", frame=1)
    cube.location = (0.5, 0.0, 0.3)
    cube.keyframe_insert("location", frame=frames)


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    base()
    save(out / "anim.blend")
    blender_default()
    save(out / "default.blend")

    # a scene whose Python would leave sentinel files, if it ever ran
    base()
    text = bpy.data.texts.new("autorun.py")
    text.write(f"open({str(out / 'sentinel_text')!r}, 'w').write('ran')\n")
    text.use_module = True  # "Register": runs when the file is opened with scripts trusted
    fcurve = bpy.data.objects["Cube"].driver_add("location", 2)
    fcurve.driver.type = "SCRIPTED"
    fcurve.driver.expression = (
        f"__import__('pathlib').Path({str(out / 'sentinel_driver')!r}).touch() or 0"
    )
    save(out / "evil.blend")

    base()
    bpy.data.objects.remove(bpy.data.objects["Camera"])
    save(out / "nocamera.blend")

    # an Alembic cache on disk: Blender cannot pack those
    base()
    bpy.ops.wm.alembic_export(filepath=str(out / "cube.abc"))
    bpy.ops.cachefile.open(filepath=str(out / "cube.abc"))
    modifier = bpy.data.objects["Cube"].modifiers.new("cache", "MESH_SEQUENCE_CACHE")
    modifier.cache_file = bpy.data.cache_files[-1]
    modifier.object_path = "/Cube/Cube"
    save(out / "alembic.blend")

    # a texture on disk (packed by the SDK), and one that does not exist (refused)
    texture = out / "texture.png"
    image = bpy.data.images.new("tex", 8, 8)
    image.pixels.foreach_set([0.8, 0.2, 0.1, 1.0] * 64)
    image.filepath_raw = str(texture)
    image.file_format = "PNG"
    image.save()
    base()
    textured(texture)
    save(out / "external.blend")
    base()
    textured(texture)
    bpy.data.images[-1].filepath = str(out / "no-such-texture.png")
    save(out / "missing.blend")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
