"""Scenes made by bpy once per session (in a subprocess), shared by the render tests."""

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sparegrid.sdk import AdminClient, Client
from tests.e2e.conftest import (
    Cluster,
    cluster,  # noqa: F401  (real processes, reaped after each test)
)
from tests.e2e.helpers import online_nodes, wait_for

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


@pytest.fixture(scope="module")
def grid(  # a live coordinator and two workers, shared by a module's tests
    tmp_path_factory: pytest.TempPathFactory, scenes: Path
) -> Iterator[tuple[Cluster, Client]]:
    root = tmp_path_factory.mktemp("grid")
    env = dict(os.environ, XDG_CONFIG_HOME=str(root / "config"))
    env.pop("SPAREGRID_API_KEY", None)
    env.pop("SPAREGRID_ADMIN_KEY", None)
    live = Cluster(root, env)
    try:
        live.start_coordinator()
        for name in ("node1", "node2"):
            live.start_worker(name, "--prefetch", "1")
        admin = AdminClient(live.address, api_key=live.admin_key)
        _, key = admin.create_account("artist", credit=10**9)
        wait_for(lambda: online_nodes(admin) == 2, what="2 workers online")
        live.env["SPAREGRID_API_KEY"] = key
        with Client(live.address, api_key=key) as client:
            yield live, client
    finally:
        live.stop_all()
