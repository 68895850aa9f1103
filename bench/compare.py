"""Frame comparison benchmark: what checking a rendered frame costs the coordinator.

The coordinator decodes a node's PNG frames itself to compare two renders of a frame, or
a spot check's crop with the same pixels of the frame (framecheck.py). Blender writes
RGBA PNGs whose rows are mostly Paeth-filtered, which a plain row-by-row decoder has to
undo byte by byte in Python. This renders one frame with bpy at each size (or, without
bpy, makes a noisy frame with the same filters) and times, in one run: the first decoder
(row by row; on the smallest frame only, and scaled by pixels for the others), the
decoder now (Pillow for 8-bit frames; 16-bit ones are unfiltered with numpy, one step per
anti-diagonal), a whole-frame comparison, and a spot check's comparison (a random 1/16
crop).

    python bench/compare.py [--sizes 320x240,1920x1080,3840x2160] [--samples 1]

Prints a table and saves it under bench/results/.
"""

import argparse
import json
import platform
import random
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from sparegrid.coordinator.domain import FileRef
from sparegrid.coordinator.services.comparators import ImageComparator
from sparegrid.coordinator.services.images import decode_png
from sparegrid.wire import sha256_hex
from sparegrid.wire.render import output_name

RESULTS = Path(__file__).parent / "results"

RENDER = """
import sys, bpy
bpy.ops.wm.read_factory_settings(use_empty=False)
s = bpy.context.scene
s.render.engine = "CYCLES"
s.cycles.samples = int(sys.argv[4])
s.render.resolution_x, s.render.resolution_y = int(sys.argv[2]), int(sys.argv[3])
s.render.resolution_percentage = 100
s.render.image_settings.file_format = "PNG"
s.render.filepath = sys.argv[1]
bpy.ops.render.render(write_still=True)
"""


def blender_frame(path: Path, width: int, height: int, samples: int) -> bytes | None:
    args = [str(path), str(width), str(height), str(samples)]
    proc = subprocess.run([sys.executable, "-c", RENDER, *args], capture_output=True)
    return path.read_bytes() if proc.returncode == 0 and path.exists() else None


def encode_png(pixels: np.ndarray, filter_kind: int = 0) -> bytes:
    """An 8-bit RGB or RGBA PNG of `pixels`, every row marked with `filter_kind` (the
    bytes are written as they are: for a noisy test frame the filter only sets the work)."""
    height, width, channels = pixels.shape
    kinds = np.full((height, 1), filter_kind, dtype=np.uint8)
    raw = np.concatenate([kinds, pixels.reshape(height, width * channels)], axis=1)

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body)
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, {3: 2, 4: 6}[channels], 0, 0, 0)
    idat = zlib.compress(raw.tobytes(), 1)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def paeth_frame(width: int, height: int) -> bytes:
    """A noisy RGBA frame, every row Paeth-filtered (what Blender mostly writes)."""
    pixels = np.random.default_rng(1).integers(0, 256, (height, width, 4), dtype=np.uint8)
    return encode_png(pixels, filter_kind=4)


def row_by_row(data: bytes) -> float:
    """Seconds the earlier decoder took: each Average or Paeth row a byte at a time."""
    start = time.perf_counter()
    pos, idat, header = 8, b"", b""
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        if kind == b"IHDR":
            header = data[pos + 8 : pos + 8 + length]
        elif kind == b"IDAT":
            idat += data[pos + 8 : pos + 8 + length]
        pos += 12 + length
    width, height = struct.unpack(">II", header[:8])
    bpp, stride = 4, width * 4
    rows = np.frombuffer(zlib.decompress(idat), dtype=np.uint8).reshape(height, stride + 1)
    prior = np.zeros(stride, dtype=np.int32)
    for y in range(height):
        kind, cur = int(rows[y, 0]), rows[y, 1:].astype(np.int32)
        if kind == 1:
            for c in range(bpp):
                cur[c::bpp] = np.cumsum(cur[c::bpp]) & 0xFF
        elif kind == 2:
            cur = (cur + prior) & 0xFF
        elif kind in (3, 4):
            for i in range(stride):
                left = int(cur[i - bpp]) if i >= bpp else 0
                up = int(prior[i])
                if kind == 3:
                    pred = (left + up) // 2
                else:
                    up_left = int(prior[i - bpp]) if i >= bpp else 0
                    p = left + up - up_left
                    pa, pb, pc = abs(p - left), abs(p - up), abs(p - up_left)
                    pred = left if pa <= pb and pa <= pc else up if pb <= pc else up_left
                cur[i] = (int(cur[i]) + pred) & 0xFF
        prior = cur
    return time.perf_counter() - start


def timed(fn: Any, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def crop_png(frame: bytes, box: tuple[int, int, int, int], height: int) -> bytes:
    """The crop a spot check would return: the same pixels, written as their own PNG."""
    pixels = np.round(decode_png(frame) * 255).astype(np.uint8)
    x0, x1, y0, y1 = box
    return encode_png(np.ascontiguousarray(pixels[height - y1 : height - y0, x0:x1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="320x240,1920x1080,3840x2160")
    parser.add_argument("--samples", type=int, default=1)
    args = parser.parse_args()
    sizes = [tuple(map(int, s.split("x"))) for s in args.sizes.split(",")]
    comparator, rng = ImageComparator(), random.Random(1)
    rows: list[tuple[str, str]] = []
    runs: list[dict[str, Any]] = []
    old_per_pixel = 0.0
    with tempfile.TemporaryDirectory(prefix="sparegrid-bench-compare-") as tmp:
        for width, height in sizes:
            frame = blender_frame(Path(tmp) / f"{width}.png", width, height, args.samples)
            source = "Blender" if frame is not None else "synthetic Paeth"
            frame = frame or paeth_frame(width, height)
            if not old_per_pixel:
                old_per_pixel = row_by_row(frame) / (width * height)
            old = old_per_pixel * width * height
            new = timed(lambda f=frame: decode_png(f))
            params = {"resolution": [width, height], "frames": [1], "format": "png"}
            store = {sha256_hex(frame): frame}
            whole = [FileRef(output_name(1, None, "png"), sha256_hex(frame), len(frame))]
            # two different digests force a decode of both: the cost of a whole check
            twin = frame + b"\0"  # trailing bytes after IEND: the same image, another digest
            store[sha256_hex(twin)] = twin
            other = [FileRef(whole[0].name, sha256_hex(twin), len(twin))]
            full_check = timed(
                lambda p=params, a=whole, b=other, r=store.__getitem__: comparator.agree(p, a, b, r)
            )
            w, h = max(16, width // 4), max(16, height // 4)
            spot_times = []
            for _ in range(5):
                x0, y0 = rng.randrange(0, width - w + 1), rng.randrange(0, height - h + 1)
                box = (x0, x0 + w, y0, y0 + h)
                part = crop_png(frame, box, height)
                store[sha256_hex(part)] = part
                crop = [FileRef(output_name(1, box, "png"), sha256_hex(part), len(part))]
                crop_params = {**params, "tile": list(box)}
                start = time.perf_counter()
                ok = comparator.agree_crop(params, whole, crop_params, crop, store.__getitem__)
                spot_times.append(time.perf_counter() - start)
                assert ok, "a crop of the frame must match it"
            spot = sum(spot_times) / len(spot_times)
            label = f"{width}x{height} ({source})"
            rows += [
                (f"{label}: decode, row by row (before)", f"{old * 1000:.0f} ms"),
                (f"{label}: decode, now (Pillow)", f"{new * 1000:.0f} ms"),
                (f"{label}: speed-up", f"{old / new:.1f}x"),
                (f"{label}: whole-frame check (2 decodes + rule)", f"{full_check * 1000:.0f} ms"),
                (f"{label}: spot check, mean of 5 crops", f"{spot * 1000:.0f} ms"),
            ]
            runs.append(
                {
                    "size": [width, height],
                    "source": source,
                    "old_s": old,
                    "new_s": new,
                    "whole_check_s": full_check,
                    "spot_check_s": spot,
                }
            )
    rows.append(("(before: measured on the first size, scaled by pixels)", ""))
    width_col = max(len(k) for k, _ in rows)
    text = "\n".join(f"{k:<{width_col}}  {v}" for k, v in rows)
    text += f"\n(machine: {platform.node()}, {platform.processor() or platform.machine()})"
    print(text)
    RESULTS.mkdir(exist_ok=True)
    name = f"compare-{time.strftime('%Y%m%d-%H%M%S')}"
    (RESULTS / f"{name}.txt").write_text(text + "\n")
    (RESULTS / f"{name}.json").write_text(json.dumps({"args": vars(args), "runs": runs}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
