"""Tiled stills stitched on a client without Blender: PNG levels copied exactly."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sparegrid.sdk import SparegridError
from sparegrid.sdk import render as sdk_render
from sparegrid.sdk.render import stitch_tiles
from sparegrid.wire.png import encode_png, png_levels

W, H = 13, 9


def tiles_of(image: np.ndarray, tmp: Path, columns: int = 3, rows: int = 2) -> list[Path]:
    """The tiles Blender would write: y counted from the bottom of the frame."""
    xs = [i * W // columns for i in range(columns + 1)]
    ys = [j * H // rows for j in range(rows + 1)]
    paths = []
    for j in range(rows):
        for i in range(columns):
            x0, x1, y0, y1 = xs[i], xs[i + 1], ys[j], ys[j + 1]
            path = tmp / f"tile_x{x0}-{x1}_y{y0}-{y1}.png"
            path.write_bytes(encode_png(image[H - y1 : H - y0, x0:x1]))
            paths.append(path)
    return paths


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_png_tiles_stitch_exactly(tmp_path: Path, dtype: type) -> None:
    top = np.iinfo(dtype).max
    image = np.random.default_rng(3).integers(0, top + 1, (H, W, 4)).astype(dtype)
    tiles = tiles_of(image, tmp_path)
    out = stitch_tiles(tiles, tmp_path / "still.png", W, H)
    assert np.array_equal(png_levels(out.read_bytes()), image)


def test_stitching_png_tiles_needs_no_bpy(tmp_path: Path) -> None:
    image = np.random.default_rng(4).integers(0, 65536, (H, W, 4)).astype(np.uint16)
    tiles = tiles_of(image, tmp_path)
    code = (
        "import sys; sys.modules['bpy'] = None\n"  # any import of bpy now fails
        "from pathlib import Path\n"
        "from sparegrid.sdk.render import stitch_tiles\n"
        f"stitch_tiles([Path(p) for p in {[str(t) for t in tiles]!r}], "
        f"Path({str(tmp_path / 'still.png')!r}), {W}, {H})\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    assert np.array_equal(png_levels((tmp_path / "still.png").read_bytes()), image)


@pytest.mark.skipif(not sdk_render.have_blender(), reason="needs bpy")
def test_stitch_agrees_with_blenders(tmp_path: Path) -> None:
    """The tiles' orientation is Blender's: its own stitch gives the same levels."""
    image = np.random.default_rng(5).integers(0, 256, (H, W, 4)).astype(np.uint8)
    tiles = tiles_of(image, tmp_path)
    ours = stitch_tiles(tiles, tmp_path / "ours.png", W, H)
    sdk_render._tool(
        "stitch", str(tmp_path / "blender.png"), "png", "8", str(W), str(H), *map(str, tiles)
    )
    theirs = png_levels((tmp_path / "blender.png").read_bytes())
    assert np.array_equal(png_levels(ours.read_bytes()), theirs)


def test_bad_tiles_are_refused_and_nothing_is_written(tmp_path: Path) -> None:
    image = np.zeros((H, W, 4), dtype=np.uint8)
    tiles = tiles_of(image, tmp_path)
    out = tmp_path / "still.png"
    cases = {
        "tiles cover": tiles[:-1],
        "overlaps another tile": [*tiles, tiles[0]],
    }
    liar = tmp_path / "tile_x0-5_y0-5.png"
    liar.write_bytes(encode_png(np.zeros((3, 3, 4), dtype=np.uint8)))  # not 5x5
    cases["its name says otherwise"] = [liar]
    junk = tmp_path / "tile_x0-13_y0-9.png"
    junk.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    cases["not a PNG"] = [junk]
    for why, given in cases.items():
        with pytest.raises(SparegridError) as caught:
            stitch_tiles(given, out, W, H)
        assert caught.value.code == "BAD_TILE" and why in caught.value.message, why
        assert not out.exists()
