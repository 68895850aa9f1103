"""What a sandboxed executor may read: the Python installation, system libraries, its
scratch and its inputs; not the node key, not the home directory, not the rest of /tmp.

The probe runs as the daemon would start it: `python -m` from a working directory (which
Python then puts on the import path, and so on the read list), with the sandbox settings
the daemon computes for its config. Skipped, with the reason, where the kernel has no
Landlock or no user namespaces.
"""

import json
import os
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from sparegrid.worker.slots.child.sandbox import _SYSTEM_READ, probe, python_paths

PROBE = """
    import json, os, sys
    from dataclasses import replace
    from pathlib import Path
    from sparegrid.worker.slots.child import sandbox
    from sparegrid.worker.config import WorkerConfig
    from sparegrid.worker.startup import sandbox_settings

    data_dir = Path(sys.argv[1])
    config = WorkerConfig(coordinator="127.0.0.1:1", data_dir=data_dir, name="probe")
    settings = replace(sandbox_settings(config), scratch=str(data_dir.resolve() / "work" / "0"))
    report = sandbox.apply(settings)
    out = {"report": report.summary()}
    for target in sys.argv[2:]:
        try:
            if os.path.isdir(target):
                os.listdir(target)
            else:
                Path(target).read_bytes()
            out[target] = "read"
        except OSError as exc:
            out[target] = f"refused: {exc.strerror}"
    print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def isolation(tmp_path_factory: pytest.TempPathFactory) -> None:
    report = probe(tmp_path_factory.mktemp("probe"))
    if not report.filesystem.startswith("ok"):
        pytest.skip(f"no Landlock on this kernel: {report.filesystem}")


@pytest.fixture
def home_secret() -> Iterator[Path]:
    """A file in the real home directory, the kind of place ~/.ssh is."""
    try:
        folder = Path(tempfile.mkdtemp(prefix=".sparegrid-test-", dir=Path.home()))
    except OSError as exc:
        pytest.skip(f"cannot plant a file in the home directory: {exc}")
    secret = folder / "id_ed25519"
    secret.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    try:
        yield secret
    finally:
        secret.unlink()
        folder.rmdir()


def run_probe(cwd: Path, data_dir: str, *targets: str) -> dict[str, str]:
    """Runs the probe with `python -m` from `cwd`, so `cwd` is on its import path."""
    (cwd / "sandbox_read_probe.py").write_text(textwrap.dedent(PROBE))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONSAFEPATH"}
    proc = subprocess.run(
        [sys.executable, "-m", "sandbox_read_probe", data_dir, *targets],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out: dict[str, str] = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "files: ok" in out["report"], out["report"]
    return out


def _node(data_dir: Path) -> Path:
    data_dir.mkdir(parents=True)
    key = data_dir / "node.key"
    key.write_bytes(b"private key")
    (data_dir / "cache").mkdir()
    (data_dir / "cache" / "input").write_bytes(b"an input")
    return key


def test_started_from_the_data_dirs_parent_the_node_key_stays_unreadable(
    isolation: None, tmp_path: Path
) -> None:
    key = _node(tmp_path / "node")
    out = run_probe(tmp_path, "node", str(key), str(tmp_path), str(tmp_path / "node"))
    assert out[str(key)].startswith("refused"), out
    assert out[str(tmp_path)].startswith("refused") and out[str(tmp_path / "node")] != "read"
    assert out.get(str(tmp_path / "node" / "cache" / "input"), "read") == "read"


def test_started_from_home_the_home_directory_stays_unreadable(
    isolation: None, tmp_path: Path, home_secret: Path
) -> None:
    key = _node(tmp_path / "node")
    out = run_probe(Path.home(), str(tmp_path / "node"), str(home_secret), str(Path.home()))
    assert out[str(home_secret)].startswith("refused"), out
    assert out[str(Path.home())].startswith("refused"), out
    assert key.exists()


def test_only_system_and_python_folders_are_readable(isolation: None, tmp_path: Path) -> None:
    key = _node(tmp_path / "node")
    tops = ["/home", "/root", "/srv", "/mnt", "/media", "/var", "/tmp", "/etc", "/boot"]
    inputs = tmp_path / "node" / "cache" / "input"
    own = str(Path(__file__).resolve().parents[2] / "worker" / "sparegrid" / "worker")
    allowed = [str(Path(json.__file__)), "/usr/lib", "/etc/os-release", str(inputs)]
    targets = [t for t in tops if os.path.exists(t)] + [str(key), *allowed]
    out = run_probe(tmp_path, str(tmp_path / "node"), *targets)
    for top in tops:
        if os.path.exists(top):
            assert out[top].startswith("refused"), f"{top} is readable in the sandbox"
    assert out[str(key)].startswith("refused")
    for path in allowed:
        assert out[path] == "read", f"{path}: {out[path]}"
    assert own in python_paths() or any(own.startswith(p) for p in python_paths())


@pytest.mark.parametrize("wide", ["/", "/home", "/root", "/tmp", "/var", "/srv", "/mnt"])
def test_the_read_list_holds_no_folder_that_holds_user_data(wide: str) -> None:
    """The system list and the Python paths: none is a folder where homes, node data or
    other users' files live, or one that holds the home directory."""
    home = os.path.realpath(Path.home())
    for path in [*_SYSTEM_READ, *python_paths()]:
        real = os.path.realpath(path)
        assert real != wide, f"{path} opens {wide} to every task"
        assert not (home + "/").startswith(real.rstrip("/") + "/"), f"{path} holds {home}"
