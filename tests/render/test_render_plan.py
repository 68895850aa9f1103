"""The render kind's checks at submit: every bad input refused with a message saying why."""

import gzip
from pathlib import Path

import pytest

from sparegrid.coordinator.domain import FileRef
from sparegrid.coordinator.errors import CoordinatorError
from sparegrid.coordinator.kinds.blendfile import BlendError, blend_version
from sparegrid.coordinator.kinds.render import Render, tile_boxes

GOOD = {"frame_start": 1, "frame_end": 6, "samples": 4, "resolution": [48, 36]}


class Files:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, digest: str) -> Path:
        return self.root / digest


def plan(tmp_path: Path, data: bytes, params: dict):
    (tmp_path / "d").write_bytes(data)
    ref = FileRef("scene", "d", len(data))
    return Render().plan(params, {"scene": ref}, Files(tmp_path))


@pytest.fixture(scope="module")
def blend(scenes: Path) -> bytes:
    return (scenes / "anim.blend").read_bytes()


def refused(tmp_path: Path, data: bytes, params: dict) -> str:
    with pytest.raises(CoordinatorError) as info:
        plan(tmp_path, data, params)
    assert info.value.code == "BAD_PARAMS"
    return info.value.message


def test_one_task_per_frame_with_work_in_pixels_times_samples(tmp_path, blend) -> None:
    tasks = plan(tmp_path, blend, GOOD)
    assert [t.params["frames"] for t in tasks] == [[1], [2], [3], [4], [5], [6]]
    assert all(t.work == 48 * 36 * 4 for t in tasks)
    assert tasks[0].params["format"] == "png" and tasks[0].params["depth"] == 8


def test_chunks_and_steps(tmp_path, blend) -> None:
    tasks = plan(tmp_path, blend, {**GOOD, "frame_step": 2, "chunk": 2})
    assert [t.params["frames"] for t in tasks] == [[1, 3], [5]]
    assert tasks[0].work == 2 * 48 * 36 * 4


def test_tiles_cover_the_frame_once(tmp_path, blend) -> None:
    params = {**GOOD, "frame_end": 1, "tiles": [3, 2], "format": "exr"}
    tasks = plan(tmp_path, blend, params)
    assert len(tasks) == 6
    assert sum(t.work for t in tasks) == 48 * 36 * 4
    boxes = [tuple(t.params["tile"]) for t in tasks]
    assert boxes == tile_boxes(48, 36, 3, 2)
    covered = {(x, y) for x0, x1, y0, y1 in boxes for x in range(x0, x1) for y in range(y0, y1)}
    assert len(covered) == 48 * 36


def test_blend_versions_and_compression(tmp_path, blend) -> None:
    path = tmp_path / "x.blend"
    path.write_bytes(blend)  # zstd, as Blender 5 writes it
    assert blend_version(path) == "5.0"
    import zstandard

    raw = zstandard.ZstdDecompressor().stream_reader(blend).read()
    path.write_bytes(raw)
    assert blend_version(path) == "5.0"
    path.write_bytes(gzip.compress(raw))
    assert blend_version(path) == "5.0"
    # a Blender 4 style header and blocks (8-byte pointers, little-endian)
    legacy = b"BLENDER-v402" + b"REND" + (4).to_bytes(4, "little") + bytes(16) + b"abcd"
    path.write_bytes(legacy + b"ENDB" + bytes(20))
    assert blend_version(path) == "4.2"
    path.write_bytes(legacy)
    with pytest.raises(BlendError, match="no ENDB"):
        blend_version(path)


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda b: b"PK\x03\x04 a zip file, not a scene", "is not a .blend file"),
        (lambda b: b[: len(b) // 2], "truncated or corrupt"),
        (lambda b: b[:4000] + bytes(200) + b[4200:], "compressed data is corrupt"),
        (lambda b: b"BLENDER17-01v0500" + bytes(64), "corrupt"),
        (lambda b: b"", "is not a .blend file"),
    ],
    ids=["not-blend", "truncated", "corrupt-zstd", "corrupt-blocks", "empty"],
)
def test_bad_scene_files_are_refused(tmp_path, blend, mutate, expected) -> None:
    message = refused(tmp_path, mutate(blend), GOOD)
    assert "input 'scene'" in message and expected in message


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({**GOOD, "format": "jpeg"}, "unknown output format 'jpeg'; use one of: png, exr"),
        ({**GOOD, "format": "png", "depth": 32}, "png depth must be one of [8, 16]"),
        ({**GOOD, "resolution": [0, 10]}, "'resolution' values must be 1..65536"),
        ({**GOOD, "resolution": "1920x1080"}, "'resolution' must be [width, height]"),
        (
            {k: v for k, v in GOOD.items() if k != "resolution"},
            "'resolution' [width, height] is required",
        ),
        (
            {k: v for k, v in GOOD.items() if k != "samples"},
            "'samples' (Cycles samples per pixel) is required",
        ),
        ({**GOOD, "samples": 0}, "'samples' must be between 1"),
        ({**GOOD, "frame_start": 5, "frame_end": 2}, "frame_end 2 is before frame_start 5"),
        ({**GOOD, "frame_start": -1}, "'frame_start' must be between 0"),
        ({**GOOD, "tiles": [2, 2]}, "tiles split one still frame; got frames 1-6"),
        ({**GOOD, "frame_end": 1, "tiles": [100, 2]}, "'tiles' values must be 1..64"),
        ({**GOOD, "frame_end": 1, "resolution": [8, 8], "tiles": [16, 2]}, "do not fit"),
        ({**GOOD, "colour": "red"}, "unknown parameter(s) ['colour']"),
    ],
)
def test_bad_params_are_refused(tmp_path, blend, params, expected) -> None:
    assert expected in refused(tmp_path, blend, params)


def test_the_scene_input_is_required(tmp_path) -> None:
    with pytest.raises(CoordinatorError, match="expects inputs"):
        Render().plan(GOOD, {}, Files(tmp_path))


def test_a_scene_that_inflates_like_a_bomb_is_refused(tmp_path: Path) -> None:
    """A zstd stream of zeros in a block claiming 1 GiB: walking it would read the whole
    gigabyte (a real bomb: terabytes); it is refused once past 200 times the file size."""
    import zstandard

    # Blender 5's block header: code, SDNA index, old address, length, count
    header = b"BLENDER17-01v0500" + b"DATA" + bytes(12) + (1 << 30).to_bytes(8, "little")
    header += bytes(8)
    stream = zstandard.ZstdCompressor().compressobj()
    data = stream.compress(header) + stream.compress(bytes(300 << 20)) + stream.flush()
    assert len(data) < 1 << 20
    path = tmp_path / "bomb.blend"
    path.write_bytes(data)
    with pytest.raises(BlendError, match="decompression bomb"):
        blend_version(path)
