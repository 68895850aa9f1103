"""Errors of the SDK and the coordinator that name a Python parameter name the flag in the
CLI: `batch_size=4` reads `--batch-size 4`."""

from pathlib import Path

import pytest

from sparegrid.cli import flagwords
from sparegrid.cli.main import build_parser
from sparegrid.sdk import render as sdk_render
from tests.cli.conftest import Cli, FakeGrid


def test_every_mapped_flag_is_a_flag_of_job_submit() -> None:
    parser = build_parser()
    job = parser._subparsers._group_actions[0].choices["job"]
    submit = job._subparsers._group_actions[0].choices["submit"]
    flags = {s for action in submit._actions for s in action.option_strings}
    assert set(flagwords.FLAGS.values()) <= flags


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("batch_size must be 1..65536, got 0", "--batch-size must be 1..65536, got 0"),
        (
            "exported for batches of exactly 4: use batch_size=4 and a multiple of 4 samples",
            "exported for batches of exactly 4: use --batch-size 4 and a multiple of 4 samples",
        ),
        (
            "render job: 'chunk' must be between 1 and 10",
            "render job: --chunk must be between 1 and 10",
        ),
        ("min_vram_gb must be 0 (any) or more GiB", "--min-vram must be 0 (any) or more GiB"),
        (
            "verification policy: replicas must be 0 (adaptive) or 2 to 16, got 1",
            "verification policy: --replicas must be 0 (adaptive) or 2 to 16, got 1",
        ),
        (
            "generate job: 'temperature' must be from 0 to 2, got 3",
            "generate job: --temperature must be from 0 to 2, got 3",
        ),
        (
            "render job: 'resolution' values must be 1..65536, got 0",
            "render job: --resolution values must be 1..65536, got 0",
        ),
        (
            "echo job: 'data' must be a string of at most 65536 characters",
            "echo job: --data must be a string of at most 65536 characters",
        ),
        (
            "checksum job: expects inputs ['data'], got none",
            "checksum job: expects inputs ['data'], got none; give each with --input "
            "NAME=PATH (PATH alone is input 'data')",
        ),
        (
            "resolution '64' is not WxH, e.g. 1920x1080",
            "--resolution '64' is not WxH, e.g. 1920x1080",
        ),
        # words that are not used as names stay
        ("input 'data' is given twice", "input 'data' is given twice"),
        ("inputs disagree on the number of samples", "inputs disagree on the number of samples"),
        ("params.tasks must be at least 1", "params.tasks must be at least 1"),
        ("subtasks must wait", "subtasks must wait"),
        ("quorum 2 of 4 is not a majority", "quorum 2 of 4 is not a majority"),
    ],
)
def test_names_become_flags_only_where_they_are_names(message: str, expected: str) -> None:
    assert flagwords.rewrite(message) == expected


@pytest.fixture
def files(tmp_path: Path) -> tuple[str, str]:
    (tmp_path / "m.pt2").write_bytes(b"checked later")
    (tmp_path / "x.safetensors").write_bytes(b"checked later")
    return str(tmp_path / "m.pt2"), str(tmp_path / "x.safetensors")


@pytest.mark.parametrize(
    ("flags", "said"),
    [
        (["--batch-size", "0"], "--batch-size must be 1..65536, got 0"),
        (["--min-vram", "-1"], "--min-vram must be 0 (any) or more GiB, got -1.0"),
        (["--shard-batches", "0"], "--shard-batches must be at least 1, got 0"),
    ],
)
async def test_inference_flags_are_named_in_errors_and_nothing_is_sent(
    cli: Cli, grid: FakeGrid, files: tuple[str, str], flags: list[str], said: str
) -> None:
    model, inputs = files
    result = await cli("job", "submit", "inference", "--model", model, "--inputs", inputs, *flags)
    assert result.code == 1
    assert f"error: {said} [BAD_PARAMS]" in result.err
    assert "_" not in result.err.split("[")[0]  # no Python name left
    assert grid.coordinator.blobs.blobs == {} and grid.coordinator.jobs == {}


@pytest.mark.parametrize(
    ("flags", "said"),
    [
        (
            ["--frames", "4-1"],
            "--frames '4-1' ends before it starts: START-END goes forward, e.g. 1-4",
        ),
        (["--resolution", "64"], "--resolution '64' is not WxH, e.g. 1920x1080"),
        (["--tiles", "4"], "--tiles '4' is not NxM, e.g. 4x4"),
    ],
)
async def test_render_flags_are_named_in_errors_and_nothing_is_sent(
    cli: Cli,
    grid: FakeGrid,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    flags: list[str],
    said: str,
) -> None:
    monkeypatch.setattr(sdk_render, "have_blender", lambda: False)  # checked without bpy
    scene = tmp_path / "scene.blend"
    scene.write_bytes(b"BLENDER-v402" + bytes(100))
    given = {"--frames": "1-4", "--samples": "1", "--resolution": "64x64"}
    given.update(zip(flags[::2], flags[1::2], strict=True))
    argv = [x for pair in given.items() for x in pair]
    result = await cli("job", "submit", "render", "--blend", str(scene), *argv)
    assert result.code == 1
    assert f"error: {said} [BAD_PARAMS]" in result.err
    assert grid.coordinator.blobs.blobs == {} and grid.coordinator.jobs == {}
