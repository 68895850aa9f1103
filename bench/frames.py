"""Frame check calibration: how far honest renders of the same pixels fall apart, and how
far cheap ones do, measured with the metrics and the rule the coordinator uses.

Renders with bpy on the CPU, through the worker's own `configure` and `render_frame`,
a few small scenes, each with the denoiser on and off and dither 1 and 0, and compares:

- honest pairs: a rerun; one thread instead of all; Cycles' AVX2 kernel off; spot-check
  crops (random boxes drawn by the coordinator's `spot_check`, rendered as a worker now
  renders them) against the frame; the same crops against a frame whose camera moved by
  1e-4 (a stand-in for another machine's float rounding: there is no GPU here, so CPU
  against GPU is not measured);
- cheap frames, whole and through the same spot-check crops: 1/4 and 1/2 of the samples,
  half resolution upscaled, half resolution with 4 samples denoised and upscaled (about
  1/32 of the work), denoised from 1/4 of the samples, the honest frame blurred, the next
  frame of the animation, another seed;
- for reference (not in either count): another seed for the scene's own pixels, the
  camera moved by 1e-3, crops rendered as workers rendered them before (no denoiser), and
  the margin around a crop the denoiser needs (0, 8, 16, 32 pixels).

    python bench/frames.py [--crops 20] [--size 192x108] [--samples 32]

Prints a table and saves it (txt and json) under bench/results/.
"""

import argparse
import io
import json
import math
import platform
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

from sparegrid.coordinator.kinds.render import SPOT_MARGIN, spot_check
from sparegrid.coordinator.services import framecheck
from sparegrid.coordinator.services.images import decode_png
from sparegrid.worker.executors.render import blender

RESULTS = Path(__file__).parent / "results"
METRICS = ("psnr", "block_psnr", "off", "noise_correlation", "ssim", "untrimmed_psnr", "max_levels")
FRAME = 2  # the frame rendered; FRAME + 1 is the "another frame" cheat
MARGINS = (0, 8, 16, 32)


def build_scenes(bpy: Any, out: Path) -> dict[str, Path]:
    """The scenes, each saved with the denoiser on/off and dither 1/0 (Blender's defaults
    are on and 1). `cube`: Blender's default scene (what the false rejections came from);
    `monkey`: a glossy metal head over a finely textured floor, lit by a small area light;
    `glass`: a glass sphere and a small bright light, with caustics and fireflies."""
    paths = {}
    for name in ("cube", "monkey", "glass"):
        for denoise in (True, False):
            for dither in (1.0, 0.0):
                _scene(bpy, name)
                scene = bpy.context.scene
                scene.cycles.use_denoising = denoise
                scene.render.dither_intensity = dither
                label = f"{name} {'denoised' if denoise else 'raw'} dither{dither:.0f}"
                path = out / f"{name}-{int(denoise)}-{int(dither)}.blend"
                bpy.ops.wm.save_as_mainfile(filepath=str(path))
                paths[label] = path
    return paths


def _scene(bpy: Any, name: str) -> None:
    bpy.ops.wm.read_factory_settings(use_empty=False)
    scene = bpy.context.scene
    scene.render.engine = "CYCLES"
    scene.frame_start, scene.frame_end = 1, 24
    cube = bpy.data.objects["Cube"]
    cube.keyframe_insert("location", frame=1)
    cube.location = (1.5, 0.0, 0.5)
    cube.keyframe_insert("location", frame=24)
    if name == "cube":
        return
    light = bpy.data.objects["Light"]
    if name == "monkey":
        bpy.ops.mesh.primitive_monkey_add(location=(0, -1, 1.2))
        bpy.ops.object.shade_smooth()
        _material(bpy, bpy.context.object, roughness=0.15, metallic=0.8)
        bpy.ops.mesh.primitive_plane_add(size=20, location=(0, 0, -1))
        floor = _material(bpy, bpy.context.object)
        texture = floor.node_tree.nodes.new("ShaderNodeTexNoise")
        texture.inputs["Scale"].default_value = 40
        bsdf = floor.node_tree.nodes["Principled BSDF"]
        floor.node_tree.links.new(texture.outputs["Color"], bsdf.inputs["Base Color"])
        light.data.type, light.data.energy, light.data.size = "AREA", 600, 0.5
    else:
        bpy.ops.mesh.primitive_uv_sphere_add(radius=1.0, location=(-0.5, -1.5, 1.0))
        bpy.ops.object.shade_smooth()
        glass = _material(bpy, bpy.context.object, roughness=0.0)
        glass.node_tree.nodes["Principled BSDF"].inputs["Transmission Weight"].default_value = 1
        bpy.ops.mesh.primitive_plane_add(size=20, location=(0, 0, -1))
        _material(bpy, bpy.context.object)
        light.data.energy, light.data.shadow_soft_size = 3000, 0.05


def _material(bpy: Any, obj: Any, roughness: float = 0.5, metallic: float = 0.0) -> Any:
    material = bpy.data.materials.new(obj.name)
    material.use_nodes = True
    bsdf = material.node_tree.nodes["Principled BSDF"]
    bsdf.inputs["Roughness"].default_value = roughness
    bsdf.inputs["Metallic"].default_value = metallic
    obj.data.materials.append(material)
    return material


class Renderer:
    """One open scene, rendered the way a worker renders it."""

    def __init__(self, bpy: Any, path: Path, work: Path, size: tuple[int, int], samples: int):
        self.bpy, self.work = bpy, work
        self.opened = blender.open_scene(bpy, path)
        self.width, self.height = size
        self.samples = samples
        self.renders = 0

    def render(
        self,
        border: tuple[int, int, int, int] | None = None,
        as_frame: bool = False,
        samples: int | None = None,
        scale: int = 1,
        frame: int = FRAME,
    ) -> np.ndarray:
        settings = blender.FrameSettings(
            samples or self.samples,
            self.width // scale,
            self.height // scale,
            "png",
            8,
            border,
            as_frame,
        )
        blender.configure(self.opened, settings)
        self.opened.scene.cycles.device = "CPU"
        path = blender.render_frame(self.bpy, self.opened.scene, frame, self.work / "out")
        self.renders += 1
        data = path.read_bytes()
        if scale == 1:
            return decode_png(data)
        small = Image.open(io.BytesIO(data))
        up = small.resize((self.width, self.height), Image.Resampling.BICUBIC)
        return decode_png(_png(up))


def _png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def window(frame: np.ndarray, box: list[int]) -> np.ndarray:
    x0, x1, y0, y1 = box
    height = frame.shape[0]
    return frame[height - y1 : height - y0, x0:x1]


def inner(crop: np.ndarray, rendered: list[int], box: list[int]) -> np.ndarray:
    """The pixels of `box` in an image of the box `rendered`."""
    x0, x1, y0, y1 = box
    rx0, _, _, ry1 = rendered
    return crop[ry1 - y1 : ry1 - y0, x0 - rx0 : x1 - rx0]


def with_state(setter: Callable[[Any], Callable[[], None]], r: Renderer, **kw: Any) -> Any:
    undo = setter(r)
    try:
        return r.render(**kw)
    finally:
        undo()


def _threads(r: Renderer) -> Callable[[], None]:
    render = r.opened.scene.render
    render.threads_mode, render.threads = "FIXED", 1
    return lambda: setattr(render, "threads_mode", "AUTO")


def _avx2(r: Renderer) -> Callable[[], None]:
    r.opened.scene.cycles.debug_use_cpu_avx2 = False
    return lambda: setattr(r.opened.scene.cycles, "debug_use_cpu_avx2", True)


def _seed(r: Renderer) -> Callable[[], None]:
    r.opened.scene.cycles.seed = 1
    return lambda: setattr(r.opened.scene.cycles, "seed", 0)


def _camera(shift: float) -> Callable[[Renderer], Callable[[], None]]:
    def setter(r: Renderer) -> Callable[[], None]:
        camera = r.opened.scene.camera
        camera.location.x += shift
        return lambda: setattr(camera.location, "x", camera.location.x - shift)

    return setter


def _denoised(r: Renderer) -> Callable[[], None]:
    before = r.opened.denoise
    r.opened.denoise = True
    return lambda: setattr(r.opened, "denoise", before)


def run_config(
    label: str,
    r: Renderer,
    crops: int,
    rng: random.Random,
    rows: list[dict[str, Any]],
    save: Path | None = None,
) -> None:
    """Every comparison of one scene configuration, appended to `rows`."""
    n = r.samples

    saved: dict[str, np.ndarray] = {}
    dither = math.ceil(r.opened.dither)  # the allowance a worker's crop report gives

    def add(kind: str, cls: str, a: np.ndarray, b: np.ndarray, crop: bool = False) -> None:
        if save is not None:
            saved[f"{len(rows)}|{kind}|{cls}|a"] = np.round(a * 255).astype(np.uint8)
            saved[f"{len(rows)}|{kind}|{cls}|b"] = np.round(b * 255).astype(np.uint8)
        context = framecheck.FRAME
        if crop:
            context = framecheck.CROP_DENOISED if r.opened.denoise else framecheck.CROP
        found = framecheck.check(a, b, framecheck.RULES[context], dither if crop else 0)
        m = {**found.metrics, "ssim": framecheck.ssim(a, b)}  # SSIM for the record only
        rows.append(
            {
                "config": label,
                "kind": kind,
                "class": cls,
                "context": context,
                "agree": found.agree,
                "failed": m.get("failed", ""),
                **{k: m[k] for k in METRICS if k in m},
            }
        )

    frame = r.render()
    honest = {
        "rerun": r.render(),
        "1 thread": with_state(_threads, r),
        "AVX2 kernel off": with_state(_avx2, r),
        "camera moved 1e-4": with_state(_camera(1e-4), r),
    }
    reference = {
        "camera moved 1e-3": with_state(_camera(1e-3), r),
        "another seed (reference)": with_state(_seed, r),
    }
    blurred = Image.fromarray(np.round(frame * 255).astype(np.uint8))
    cheap = {
        "1/2 of the samples": r.render(samples=max(1, n // 2)),
        "1/4 of the samples": r.render(samples=max(1, n // 4)),
        "half resolution, upscaled": r.render(scale=2),
        "half res, 4 samples, denoised, upscaled": with_state(_denoised, r, scale=2, samples=4),
        "denoised from 1/4 of the samples": with_state(_denoised, r, samples=max(1, n // 4)),
        "blurred 0.7 px": decode_png(_png(blurred.filter(ImageFilter.GaussianBlur(0.7)))),
        "next frame": r.render(frame=FRAME + 1),
        "another seed": reference["another seed (reference)"],
    }
    for name, other in honest.items():
        add("frame", f"honest: {name}", frame, other)
    for name, other in reference.items():
        add("frame", f"reference: {name}", frame, other)
    for name, other in cheap.items():
        add("frame", f"cheap: {name}", frame, other)
    params = {"resolution": [r.width, r.height], "format": "png", "frames": [FRAME], "tile": None}
    for i in range(crops):
        spot = spot_check(params, rng, 1 / 16, margin=SPOT_MARGIN)
        assert spot is not None
        rendered, box = spot["tile"], spot["crop"]
        piece = inner(r.render(tuple(rendered), as_frame=True), rendered, box)
        add("crop", "honest: crop vs frame", window(frame, box), piece, crop=True)
        add(
            "crop",
            "honest: crop vs frame, camera moved 1e-4",
            window(honest["camera moved 1e-4"], box),
            piece,
            crop=True,
        )
        for name, other in cheap.items():
            add("crop", f"cheap: {name}", window(other, box), piece, crop=True)
        if i < 4:
            old = r.render(tuple(box))  # as workers rendered crops before: no denoiser
            add("crop", "reference: crop as rendered before", window(frame, box), old, crop=True)
            if r.opened.denoise:
                for margin in MARGINS:
                    grown = [max(0, box[0] - margin), min(r.width, box[1] + margin)]
                    grown += [max(0, box[2] - margin), min(r.height, box[3] + margin)]
                    c = inner(r.render(tuple(grown), as_frame=True), grown, box)
                    add(
                        "crop",
                        f"reference: denoiser margin {margin}",
                        window(frame, box),
                        c,
                        crop=True,
                    )
    if save is not None:
        np.savez_compressed(save / f"{label.replace(' ', '_')}.npz", **saved)


def summarize(rows: list[dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    """Per context and class: count, agreed, and each metric's range (min / median / max)."""
    keys = ("psnr", "block_psnr", "off", "noise_correlation", "ssim")
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["context"], row["class"]), []).append(row)
    head = f"{'context':24} {'class':46} {'n':>4} {'agree':>5} {'same':>4}  "
    lines = [head + "  ".join(f"{k + ' min/med/max':>26}" for k in keys)]
    summary: dict[str, Any] = {}
    for (context, cls), group in sorted(groups.items()):
        agreed = sum(1 for g in group if g["agree"])
        same = sum(1 for g in group if math.isinf(g["psnr"]))
        entry: dict[str, Any] = {"n": len(group), "agreed": agreed, "same": same}
        cells = []
        for k in keys:
            values = sorted(g[k] for g in group if k in g)
            if not values:
                cells.append(f"{'-':>26}")
                continue
            lo, mid, hi = values[0], values[len(values) // 2], values[-1]
            entry[k] = [lo, mid, hi]
            cells.append(f"{_fmt(lo):>8}/{_fmt(mid):>8}/{_fmt(hi):>8}")
        summary[f"{context}: {cls}"] = entry
        lines.append(
            f"{context:24} {cls:46} {len(group):>4} {agreed:>5} {same:>4}  " + "  ".join(cells)
        )
    return "\n".join(lines), summary


def _fmt(v: float) -> str:
    if math.isinf(v):
        return "inf"
    return f"{v:.4f}" if abs(v) < 10 else f"{v:.1f}"


def margins(rows: list[dict[str, Any]]) -> list[str]:
    """For each rule: the honest pairs' closest approach to each threshold, and how far
    the cheap pairs the rule catches sit past the threshold that catches them best."""
    lines = []
    for context, rule in framecheck.RULES.items():
        honest = [r for r in rows if r["context"] == context and r["class"].startswith("honest")]
        cheap = [r for r in rows if r["context"] == context and r["class"].startswith("cheap")]
        if not honest:
            continue
        parts = [
            f"PSNR {min(r['psnr'] for r in honest):.1f} (>= {rule.min_psnr:g})",
            f"block {min(r['block_psnr'] for r in honest):.1f} (>= {rule.min_block_psnr:g})",
            f"off {max(r['off'] for r in honest):.3%} (<= {rule.max_off:.2%})",
        ]
        if rule.min_noise_correlation is not None:
            corr = min(r["noise_correlation"] for r in honest)
            parts.append(f"correlation {corr:.5f} (>= {rule.min_noise_correlation:g})")
        lines.append(f"{context}: honest worst: " + ", ".join(parts))
        caught = [r for r in cheap if not r["agree"]]
        if caught:
            best = min(_past(r, rule) for r in caught)
            lines.append(
                f"{context}: the cheap pair caught by the least is {best[1]} past a threshold "
                f"({best[2]})"
            )
    return lines


def _past(r: dict[str, Any], rule: framecheck.Rule) -> tuple[float, str, str]:
    """How far past its thresholds a caught pair is, by the test that catches it best:
    (a number to sort by, how far in words, which pair)."""
    options = [(rule.min_psnr - r["psnr"], f"{rule.min_psnr - r['psnr']:.1f} dB of PSNR")]
    options.append(
        (
            rule.min_block_psnr - r["block_psnr"],
            f"{rule.min_block_psnr - r['block_psnr']:.1f} dB of worst block",
        )
    )
    if r["off"] > 0:
        ratio = r["off"] / rule.max_off
        options.append((10 * math.log10(ratio), f"{ratio:.1f}x the share off"))
    if rule.min_noise_correlation is not None:
        ratio = (1 - r["noise_correlation"]) / (1 - rule.min_noise_correlation)
        options.append((10 * math.log10(max(ratio, 1e-9)), f"{ratio:.1f}x 1 - correlation"))
    score, words = max(options)
    return score, words, f"{r['config']}, {r['class']}, {r['kind']}"


def verdict(rows: list[dict[str, Any]]) -> list[str]:
    honest = [r for r in rows if r["class"].startswith("honest")]
    cheap = [r for r in rows if r["class"].startswith("cheap")]
    rejected = [r for r in honest if not r["agree"]]
    lines = [
        f"honest pairs: {len(honest)} ({sum(r['kind'] == 'crop' for r in honest)} crops), "
        f"rejected: {len(rejected)}",
        f"cheap pairs: {len(cheap)}, caught: {sum(not r['agree'] for r in cheap)}; "
        "'same' below: equal to the honest pixels within the allowance (a crop of a region "
        "the cheap render got right), which no rule can catch",
    ]
    by_class: dict[tuple[str, str], list[int]] = {}
    for r in cheap:
        counts = by_class.setdefault((r["kind"], r["class"]), [0, 0, 0])
        counts[0] += 1
        counts[1] += not r["agree"]
        counts[2] += math.isinf(r["psnr"])
    for (kind, cls), (total, caught, same) in sorted(by_class.items()):
        lines.append(f"  {kind:5} {cls:46} caught {caught:3} of {total:3} ({same} same)")
    for r in rejected[:20]:
        lines.append(f"  REJECTED: {r['config']} {r['class']} {r['kind']} ({r['failed']})")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crops", type=int, default=20, help="spot-check crops per config")
    parser.add_argument("--size", default="192x108")
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--save", type=Path, help="also save every compared pair here (npz)")
    args = parser.parse_args()
    width, height = map(int, args.size.split("x"))
    start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    renders = 0
    with tempfile.TemporaryDirectory(prefix="sparegrid-bench-frames-") as tmp:
        root = Path(tmp)
        bpy = blender.load_bpy(root / "home")
        scenes = build_scenes(bpy, root)
        rng = random.Random(args.seed)
        for label, path in scenes.items():
            r = Renderer(bpy, path, root, (width, height), args.samples)
            run_config(label, r, args.crops, rng, rows, args.save)
            renders += r.renders
            print(f"{label}: {r.renders} renders, {time.perf_counter() - start:.0f} s", flush=True)
    table, summary = summarize(rows)
    header = [
        f"frames: {args.size}, {args.samples} samples, 8-bit PNG, Cycles on the CPU "
        f"(bpy {blender_version()}); {renders} renders in {time.perf_counter() - start:.0f} s",
        "no GPU here: CPU against GPU (and GPU against GPU) is not measured; the camera "
        "moved by 1e-4 stands in for another machine's float rounding",
        "rules: " + framecheck.describe_rules(),
        f"crops: 1/16 of the frame, rendered with a {SPOT_MARGIN} px margin; the "
        "allowance for dither is 1 level per unit of the scene's dither",
    ]
    text = "\n".join([*header, "", table, "", *verdict(rows), "", *margins(rows)])
    text += f"\n(machine: {platform.node()}, {platform.processor() or platform.machine()})"
    print(text)
    RESULTS.mkdir(exist_ok=True)
    name = f"frames-{time.strftime('%Y%m%d-%H%M%S')}"
    (RESULTS / f"{name}.txt").write_text(text + "\n")
    (RESULTS / f"{name}.json").write_text(
        json.dumps(
            {"args": vars(args), "summary": summary, "rows": rows},
            indent=1,
            default=str,
        ).replace("Infinity", '"inf"')
        + "\n"
    )
    return 0


def blender_version() -> str:
    from importlib import metadata

    return metadata.version("bpy")


if __name__ == "__main__":
    sys.exit(main())
