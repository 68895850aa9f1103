"""The worker's render executor, without a coordinator: params, backends, limits, warmth."""

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.render.conftest import bpy_missing

if bpy_missing:  # the render executor will not even import without Blender
    pytest.skip("bpy (Blender) is not installed", allow_module_level=True)

from sparegrid.worker.executors import BAD_PARAMS, ExecutorError
from sparegrid.worker.executors.registry import ExecutorRegistry
from sparegrid.worker.executors.render.blender import choose_backend, cycles_backends
from sparegrid.worker.executors.render.executor import MEMORY_EXIT, output_name, parse
from sparegrid.worker.node.devices import DeviceInfo
from sparegrid.worker.upstream.messages import software_versions

GOOD = {"frames": [1], "tile": None, "samples": 4, "resolution": [48, 36]}
GOOD |= {"format": "png", "depth": 8}


def run_python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def test_params_parse() -> None:
    frames, settings = parse(json.dumps({**GOOD, "tile": [0, 24, 0, 18]}).encode())
    assert frames == [1] and settings.border == (0, 24, 0, 18) and settings.width == 48
    assert output_name(7, None, "exr") == "frame_0007.exr"
    assert output_name(1, (0, 24, 0, 18), "png") == "tile_x00000-00024_y00000-00018.png"


def test_a_spot_check_crop_of_a_whole_frame_is_rendered_as_the_frame() -> None:
    """A "crop" (the box compared, inside the "tile" rendered) marks a spot check of a whole
    frame: rendered with the scene's denoiser. A tile of a tiled still has none."""
    spot = {**GOOD, "tile": [0, 40, 0, 30], "crop": [8, 24, 6, 20]}
    _, settings = parse(json.dumps(spot).encode())
    assert settings.as_frame and settings.border == (0, 40, 0, 30)
    _, tile = parse(json.dumps({**GOOD, "tile": [0, 24, 0, 18]}).encode())
    assert not tile.as_frame
    for crop, tile_box in (([8, 48, 6, 20], [0, 40, 0, 30]), ([8, 24, 6, 20], None)):
        with pytest.raises(ExecutorError, match="'crop'"):
            parse(json.dumps({**GOOD, "tile": tile_box, "crop": crop}).encode())


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"frames": []}, "'frames' must be a list"),
        ({"resolution": [0, 1]}, "'resolution' must be [width, height]"),
        ({"samples": "many"}, "'samples' must be a positive integer"),
        ({"format": "exr", "depth": 8}, "format 'exr' at depth 8 is unknown"),
        ({"tile": [10, 5, 0, 18]}, "is not a box in the frame"),
        ({"tile": [0, 24, 0, 99]}, "is not a box in the frame"),
        ({"script": "x"}, "does not take 'script'"),
    ],
)
def test_bad_params(change, expected) -> None:
    with pytest.raises(ExecutorError) as info:
        parse(json.dumps({**GOOD, **change}).encode())
    assert info.value.code == BAD_PARAMS and expected in info.value.message


class FakePrefs:
    def __init__(self, devices: dict[str, list[str]]) -> None:
        self._devices = devices
        self.compute_device_type = "NONE"
        self.devices = [SimpleNamespace(type=t, use=False) for ts in devices.values() for t in ts]

    def get_devices_for_type(self, backend: str) -> list[SimpleNamespace]:
        return [SimpleNamespace(type=t) for t in self._devices.get(backend, [])]


def fake_bpy(prefs: FakePrefs) -> SimpleNamespace:
    addons = {"cycles": SimpleNamespace(preferences=prefs)}
    return SimpleNamespace(context=SimpleNamespace(preferences=SimpleNamespace(addons=addons)))


def test_backend_order_optix_cuda_hip_then_cpu() -> None:
    both = FakePrefs({"OPTIX": ["OPTIX"], "CUDA": ["CUDA"]})
    assert choose_backend(fake_bpy(both), "cuda") == "OPTIX"
    assert [d.use for d in both.devices] == [True, False]
    assert choose_backend(fake_bpy(FakePrefs({"CUDA": ["CUDA"], "HIP": ["HIP"]})), "cuda") == "CUDA"
    assert choose_backend(fake_bpy(FakePrefs({"HIP": ["HIP"]})), "cuda") == "HIP"
    none = FakePrefs({})
    assert choose_backend(fake_bpy(none), "cuda") == "CPU" and none.compute_device_type == "NONE"
    assert choose_backend(fake_bpy(both), "cpu") == "CPU"  # a CPU slot renders on the CPU


def test_advertised_cycles_backends() -> None:
    libraries = {"cuda": "libcuda.so.1", "nvoptix": "libnvoptix.so.1"}
    gpu = cycles_backends("5.0.1", ["cuda", "cuda"], libraries.get)
    assert gpu == {"cycles-cpu": "5.0.1", "cycles-cuda": "5.0.1", "cycles-optix": "5.0.1"}
    no_optix = cycles_backends("5.0.1", ["cuda"], {"cuda": "libcuda.so.1"}.get)
    assert sorted(no_optix) == ["cycles-cpu", "cycles-cuda"]
    assert cycles_backends("5.0.1", ["cpu"], libraries.get) == {"cycles-cpu": "5.0.1"}
    cpu = DeviceInfo(0, "cpu", "cpu")
    assert software_versions([cpu])["cycles-cpu"] == software_versions()["blender"]


def test_memory_guard_ends_the_process_and_says_why() -> None:
    proc = run_python(
        """
        import time
        from sparegrid.worker.executors.render.executor import MemoryGuard
        with MemoryGuard(1 << 20, interval=0.01):
            time.sleep(30)
        """
    )
    assert proc.returncode == MEMORY_EXIT
    assert "over the node's limit of 1 MiB" in proc.stderr


def test_worker_advertises_render_and_its_blender_only_with_bpy() -> None:
    spec = ExecutorRegistry.discover().get("render")
    assert spec is not None and spec.version.startswith("1.0+blender5.0")
    assert software_versions()["blender"].startswith("5.0")
    proc = run_python(
        """
        import importlib.abc, importlib.util, logging, sys
        class NoBpy(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "bpy":
                    raise ModuleNotFoundError("No module named 'bpy'")
        sys.meta_path.insert(0, NoBpy())
        find = importlib.util.find_spec  # as where bpy is not installed: None, not a raise
        importlib.util.find_spec = lambda name, *a: None if name == "bpy" else find(name, *a)
        logging.basicConfig()
        from sparegrid.worker.executors.registry import ExecutorRegistry
        print(sorted(s.name for s in ExecutorRegistry.discover().specs()))
        """
    )
    assert proc.returncode == 0, proc.stderr
    offered = ast.literal_eval(proc.stdout.strip())
    assert "render" not in offered  # generate is offered too where transformers is installed
    assert {"checksum", "echo", "inference"} <= set(offered)
    assert "skipping executor plugin render" in proc.stderr
    # a volunteer is told what it costs and how to install it, as README's pipx line does
    assert "so this node takes no render jobs" in proc.stderr
    assert "pipx install --python python3.11 'sparegrid[worker,render]'" in proc.stderr


def test_blender_stays_warm_across_tasks_of_one_scene(scenes: Path, tmp_path: Path) -> None:
    proc = run_python(
        """
        import json, sys
        from pathlib import Path
        from sparegrid.worker.executors import DeviceRef, ExecTask, ExecutorError
        from sparegrid.worker.executors.render.executor import RenderExecutor
        scenes, work = Path(sys.argv[1]), Path(sys.argv[2])
        ex = RenderExecutor()
        params = {"tile": None, "samples": 2, "resolution": [16, 12], "format": "png", "depth": 8}
        def run(scene, frames):
            raw = json.dumps({**params, "frames": frames}).encode()
            task = ExecTask(raw, {"scene": scenes / scene}, work, DeviceRef(0, "cpu", "cpu"))
            return [o.name for o in ex.run(task)]
        out = [run("anim.blend", [1]), run("anim.blend", [2, 3]), ex.loads]
        out += [run("evil.blend", [1]), ex.loads, ex._opened.removed_drivers, ex.backend]
        for scene in ("missing.blend", "nocamera.blend"):
            try:
                run(scene, [1])
            except ExecutorError as exc:
                out.append([exc.code, exc.message, exc.retryable])
        print(json.dumps(out))
        """,
        str(scenes),
        str(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out[:3] == [["frame_0001.png"], ["frame_0002.png", "frame_0003.png"], 1]
    assert out[3:7] == [["frame_0001.png"], 2, 1, "CPU"]  # the Python driver was removed
    code, message, retryable = out[7]
    assert code == "BAD_INPUT" and "not packed" in message and "no-such-texture" in message
    assert not retryable  # another node would refuse it too
    code, message, retryable = out[8]
    assert code == "BAD_INPUT" and "could not render frame 1" in message and "camera" in message
    assert not (scenes / "sentinel_text").exists() and not (scenes / "sentinel_driver").exists()


def test_exr_timing_attributes_are_zeroed_in_place() -> None:
    """Cycles writes render times into every EXR: two honest renders of a frame would
    differ in those bytes alone."""
    from sparegrid.worker.executors.render.executor import zero_exr_times

    def attribute(name: bytes, kind: bytes, value: bytes) -> bytes:
        return name + b"\0" + kind + b"\0" + len(value).to_bytes(4, "little") + value

    header = b"\x76\x2f\x31\x01\x02\x00\x00\x00"
    header += attribute(b"cycles.ViewLayer.render_time", b"string", b"00:01.23")
    header += attribute(b"Software", b"string", b"Blender 5.0.1")
    data = header + b"\0" + b"pixels 12:34.56"
    scrubbed = zero_exr_times(data)
    assert len(scrubbed) == len(data)
    assert b"render_time\0string\0\x08\0\0\x0000:00.00" in scrubbed
    assert b"Blender 5.0.1" in scrubbed and scrubbed.endswith(b"pixels 12:34.56")


def test_blender_leaves_the_volunteers_home_alone(tmp_path: Path) -> None:
    """BLENDER_USER_EXTENSIONS was left out: Blender read and wrote its extensions cache
    in the volunteer's ~/.config/blender (Landlock refused it; without Landlock it went)."""
    home, profile = tmp_path / "home", tmp_path / "profile"
    home.mkdir()
    code = """
        import sys
        from pathlib import Path
        from sparegrid.worker.executors.render.blender import load_bpy
        bpy = load_bpy(Path(sys.argv[1]))
        scene = str(Path(sys.argv[1]) / "scene.blend")
        bpy.ops.wm.save_as_mainfile(filepath=scene)
        bpy.ops.wm.open_mainfile(filepath=scene, load_ui=False, use_scripts=False)
    """
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), str(profile)],
        env={k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "BLENDER_"))}
        | {"HOME": str(home)},
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not (home / ".config" / "blender").exists()
    assert not (home / ".cache").exists()  # its thumbnails folders went there too
