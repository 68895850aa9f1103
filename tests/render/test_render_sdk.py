"""The SDK's side of render jobs: parsing what the artist typed, checks against the scene."""

from pathlib import Path

import pytest

from sparegrid.cli import flagwords
from sparegrid.sdk import InvalidArgumentError
from sparegrid.sdk.render import (
    SceneInfo,
    build_params,
    check_blend_file,
    latest_frame_ref,
    parse_frames,
    parse_pair,
    prepare,
    requirements_software,
)

SCENE = SceneInfo(1, 240, 1920, 1080, 128, "5.0.1", [], [])
DEFAULTS = {"frames": None, "samples": None, "resolution": None, "format": "png"}
DEFAULTS |= {"depth": None, "tiles": None, "chunk": 1}


@pytest.mark.parametrize(
    ("frames", "expected"),
    [
        (7, (7, 7, 1)),
        ("1-240", (1, 240, 1)),
        ("10-20:5", (10, 20, 5)),
        (range(1, 241), (1, 240, 1)),
        (range(1, 10, 4), (1, 9, 4)),
        ([3, 5, 7], (3, 7, 2)),
        ("1,3,5", (1, 5, 2)),  # the CLI's --frames 1,3,5: a list, as the SDK takes one
        (" 4, 5 ", (4, 5, 1)),
        (None, None),
    ],
)
def test_frames(frames, expected) -> None:
    assert parse_frames(frames) == expected


@pytest.mark.parametrize(
    "frames", ["1..5", "a-b", range(5, 1), [], [1, 2, 4], True, "1,a", "1,,3", "5,3,1"]
)
def test_bad_frames(frames) -> None:
    with pytest.raises(InvalidArgumentError):
        parse_frames(frames)


def test_an_uneven_frame_list_says_what_is_supported() -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        parse_frames("1,2,5")
    assert "frames '1,2,5' are not evenly spaced" in caught.value.message
    assert "a list like 1,3,5 is 1-5:2" in caught.value.message


def test_pairs() -> None:
    assert parse_pair("1920x1080", "resolution") == (1920, 1080)
    assert parse_pair((4, 4), "tiles") == (4, 4)
    with pytest.raises(InvalidArgumentError, match="is not NxM"):
        parse_pair("4 by 4", "tiles")


def test_defaults_come_from_the_scene() -> None:
    params = build_params(SCENE, **DEFAULTS)
    assert params["frame_start"] == 1 and params["frame_end"] == 240
    assert params["resolution"] == [1920, 1080] and params["samples"] == 128
    assert params["depth"] == 8 and "tiles" not in params


def test_the_scenes_frame_step_is_a_default_too() -> None:
    """A scene set to render every 2nd frame renders (and is charged for) half of them,
    as Blender's own Render Animation would; frames= given keeps the step given."""
    every_other = SceneInfo(1, 240, 1920, 1080, 128, "5.0.1", [], [], frame_step=2)
    assert build_params(every_other, **DEFAULTS)["frame_step"] == 2
    assert build_params(every_other, **{**DEFAULTS, "frames": "1-10"})["frame_step"] == 1


def test_frames_outside_the_scene_are_refused() -> None:
    with pytest.raises(InvalidArgumentError) as info:
        build_params(SCENE, **{**DEFAULTS, "frames": "200-300"})
    assert info.value.code == "BAD_FRAMES"
    assert "frames 200-300 are outside the scene's frame range 1-240" in info.value.message


def test_one_frame_outside_the_scene_is_named_as_a_frame() -> None:
    with pytest.raises(InvalidArgumentError) as info:
        build_params(SCENE, **{**DEFAULTS, "frames": 0})
    assert info.value.code == "BAD_FRAMES"
    assert info.value.message.startswith("frame 0 is outside the scene's frame range 1-240; ")
    assert "Frame Range" in info.value.message


def test_tiles_of_an_animation_say_to_choose_the_frame() -> None:
    """`--tiles 2x2` alone takes the scene's whole range: the user is told to pick one."""
    with pytest.raises(InvalidArgumentError) as info:
        build_params(SCENE, **{**DEFAULTS, "tiles": "2x2"})
    message = flagwords.in_flags(info.value).message
    assert "got frames 1-240 (the scene's range); choose the frame, e.g. --frames 1" in message
    assert build_params(SCENE, **{**DEFAULTS, "tiles": "2x2", "frames": 7})["tiles"] == [2, 2]


def test_without_blender_the_settings_must_be_given() -> None:
    with pytest.raises(InvalidArgumentError, match="frames, resolution and samples are needed"):
        build_params(None, **DEFAULTS)
    params = build_params(None, **{**DEFAULTS, "frames": 1, "samples": 8, "resolution": "64x48"})
    assert params["frame_end"] == 1 and params["resolution"] == [64, 48]


def test_unknown_format_is_refused() -> None:
    with pytest.raises(InvalidArgumentError, match="unknown output format 'tiff'"):
        build_params(SCENE, **{**DEFAULTS, "format": "tiff"})


def test_not_a_blend_file(tmp_path: Path) -> None:
    path = tmp_path / "a.blend"
    path.write_bytes(b"GIF89a")
    with pytest.raises(InvalidArgumentError, match=r"is not a \.blend file"):
        check_blend_file(path)
    with pytest.raises(InvalidArgumentError, match=r"no such \.blend file"):
        check_blend_file(tmp_path / "nope.blend")
    # a folder of scenes is named as one, not said not to exist
    with pytest.raises(InvalidArgumentError, match=r"is a directory; name the \.blend file"):
        check_blend_file(tmp_path)


def test_blender_requirement() -> None:
    assert requirements_software(None) == {}
    assert requirements_software("5.0.1") == {"blender": "5.0"}
    with pytest.raises(InvalidArgumentError, match=r"not like 5\.0"):
        requirements_software("five")
    assert requirements_software("5.0", "OptiX") == {"blender": "5.0", "cycles-optix": "5.0"}
    with pytest.raises(InvalidArgumentError, match="needs a Blender version too") as info:
        requirements_software(None, "cuda")
    # the CLI's user is told the flag that gives it
    assert "e.g. --blender 5.0" in flagwords.in_flags(info.value).message
    with pytest.raises(InvalidArgumentError, match="unknown backend 'metal'"):
        requirements_software("5.0", "metal")


def test_preview_is_the_highest_finished_frame() -> None:
    class State:
        def __init__(self, value: str) -> None:
            self.value = value

    class Ref:
        def __init__(self, name: str) -> None:
            self.name = name

    class Result:
        def __init__(self, state: str, *names: str) -> None:
            self.state = State(state)
            self.outputs = [Ref(n) for n in names]

    done = [
        Result("succeeded", "frame_0002.png", "frame_0003.png"),
        Result("succeeded", "frame_0001.png"),
    ]
    running = Result("running", "frame_0009.png")
    found = latest_frame_ref([*done, running])
    assert found is not None and found[0] is done[0] and found[1] == "frame_0003.png"
    assert latest_frame_ref([running]) is None


def test_files_blender_cannot_pack_are_refused(scenes: Path) -> None:
    options = {**DEFAULTS, "frames": 1, "samples": 4}
    with pytest.raises(InvalidArgumentError) as info, prepare(scenes / "alembic.blend", **options):
        pass
    assert info.value.code == "UNPACKABLE_FILES" and "cube.abc" in info.value.message


def test_external_files_are_packed_into_a_copy(scenes: Path) -> None:
    options = {**DEFAULTS, "frames": 1, "samples": 4}
    with prepare(scenes / "external.blend", **options) as (path, params):
        assert path != scenes / "external.blend" and path.is_file()
        assert params["resolution"] == [48, 36]
    assert not path.exists()  # the packed copy is temporary
