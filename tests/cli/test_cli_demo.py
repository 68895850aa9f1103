"""`sparegrid demo`: a failure shows the children's logs; the real run is end to end."""

import sys
import tempfile
from pathlib import Path

import pytest

from sparegrid.cli.main import main
from sparegrid.cli.procs import DemoError, Processes, child_env
from tests.render.conftest import bpy_missing


@pytest.fixture
def temp_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "tmp"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    return root


def test_child_env_drops_sparegrid_settings(tmp_path: Path) -> None:
    env = child_env(tmp_path, {"SPAREGRID_TLS_CA": "/ca.pem", "PATH": "/bin"})
    assert env == {
        "PATH": "/bin",
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "PYTHONUNBUFFERED": "1",
    }


def test_failed_child_is_reported_with_its_log(
    tmp_path: Path,
    temp_root: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fake_python = tmp_path / "python"
    fake_python.write_text('#!/bin/sh\necho "boom: $*"\nexit 3\n')
    fake_python.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(fake_python))
    assert main(["demo"]) == 1
    err = capsys.readouterr().err
    assert "coordinator exited with code 3 before writing coordinator.addr" in err
    assert "boom: -m sparegrid.cli.main coordinator serve --listen 127.0.0.1:0" in err
    assert "--keep" in err
    assert list(temp_root.iterdir()) == []


def test_wait_for_file_times_out(tmp_path: Path) -> None:
    procs = Processes(tmp_path, child_env(tmp_path))
    proc = procs.start("sleeper", "--help")  # exits at once, having written nothing there
    with pytest.raises(DemoError, match=r"sleeper exited with code 0 before writing x\.addr"):
        procs.wait_for_file(tmp_path / "x.addr", proc, timeout=30)
    procs.stop_all(timeout=1)


@pytest.mark.e2e
@pytest.mark.timeout(120)
def test_demo_end_to_end(temp_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--workers", "2", "--tasks", "8"]) == 0
    captured = capsys.readouterr()
    assert "8 receipts verified, 8 checksums match" in captured.out
    assert "sum 0" in captured.out
    assert "demo-node1" in captured.out
    assert "1024 samples in 4 shards, match a local run" in captured.out
    rendered = "4 frames 64x48 with Cycles, 4 receipts verified"
    assert rendered in captured.out or (bpy_missing and "skipped: bpy" in captured.out)
    # torch keeps its own cache beside the demo's temp dir; the demo leaves nothing
    assert [p for p in temp_root.iterdir() if not p.name.startswith("torchinductor_")] == []
