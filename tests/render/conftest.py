"""Scenes made by bpy once per session (in a subprocess), shared by the render tests."""

import subprocess
import sys
from pathlib import Path

import pytest

bpy_missing = (
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import importlib.util as u; raise SystemExit(u.find_spec('bpy') is None)",
        ],
        check=False,
    ).returncode
    != 0
)
needs_bpy = pytest.mark.skipif(bpy_missing, reason="bpy (Blender) is not installed")


@pytest.fixture(scope="session")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if bpy_missing:
        pytest.skip("bpy (Blender) is not installed")
    out = tmp_path_factory.mktemp("scenes")
    script = Path(__file__).with_name("make_scenes.py")
    proc = subprocess.run(
        [sys.executable, str(script), str(out)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


from tests.e2e.conftest import cluster  # noqa: E402, F401  (real processes, reaped after each test)
