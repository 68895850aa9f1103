"""The wheel `python -m build --wheel` makes is complete and publishable, so that
`pipx install 'sparegrid[worker]'` works from it: its metadata names the extras the
README's volunteer section installs, the `sparegrid` command, the license; it holds every
module, template and marker of the source tree and nothing else. Built without an
isolated environment and without installing anything, so torch is never downloaded."""

import re
import subprocess
import sys
import tomllib
import zipfile
from email.message import Message
from email.parser import Parser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("proto", "coordinator", "worker", "sdk")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    [built] = out.glob("sparegrid-*-py3-none-any.whl")
    return zipfile.ZipFile(built)


def dist_info(wheel: zipfile.ZipFile, name: str) -> str:
    [path] = [n for n in wheel.namelist() if re.fullmatch(rf"sparegrid-[^/]+\.dist-info/{name}", n)]
    return wheel.read(path).decode()


def metadata(wheel: zipfile.ZipFile) -> Message:
    return Parser().parsestr(dist_info(wheel, "METADATA"))


def requirements(meta: Message, extra: str) -> set[str]:
    """The names an extra adds, e.g. {'torch', 'nvidia-ml-py'} for worker."""
    marker = f"extra == '{extra}'"
    return {
        re.split(r"[\s<>=!~;\[]", r, maxsplit=1)[0]
        for r in meta.get_all("Requires-Dist") or []
        if marker in r
    }


def test_metadata_is_complete_for_an_index(wheel: zipfile.ZipFile) -> None:
    meta = metadata(wheel)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert (meta["Name"], meta["Version"]) == ("sparegrid", project["version"])
    assert meta["Summary"] and meta["Requires-Python"] == ">=3.11"
    assert meta["License-Expression"] == "Apache-2.0" and meta["License-File"] == "LICENSE"
    assert "Apache License" in dist_info(wheel, "licenses/LICENSE")
    assert meta["Description-Content-Type"] == "text/markdown"
    assert "pipx install 'sparegrid[worker]'" in meta.get_payload()  # the README, whole
    classifiers = meta.get_all("Classifier") or []
    assert "Programming Language :: Python :: 3.11" in classifiers
    assert "Typing :: Typed" in classifiers
    assert meta.get_all("Keywords") or meta["Keywords"]


def test_the_extras_the_readme_installs(wheel: zipfile.ZipFile) -> None:
    meta = metadata(wheel)
    extras = set(meta.get_all("Provides-Extra") or [])
    assert {"worker", "render", "generate", "postgres"} <= extras
    assert {"torch", "nvidia-ml-py", "safetensors"} <= requirements(meta, "worker")
    assert requirements(meta, "render") == {"bpy"}
    readme = (ROOT / "README.md").read_text()
    named = set(re.findall(r"pipx install [^']*'sparegrid\[([a-z,]+)\]'", readme))
    assert {"worker", "worker,render"} <= named
    assert all(set(n.split(",")) <= extras for n in named)
    core = {r.split(";")[0] for r in meta.get_all("Requires-Dist") or [] if "extra ==" not in r}
    assert not any(r.startswith(("torch", "bpy")) for r in core)  # only with the extras


def test_the_sparegrid_command_and_the_executor_entry_points(wheel: zipfile.ZipFile) -> None:
    entry_points = dist_info(wheel, "entry_points.txt")
    assert "[console_scripts]\nsparegrid = sparegrid.cli.main:main" in entry_points
    names = set(wheel.namelist())
    for module, attr in re.findall(r"= ([\w.]+):(\w+)", entry_points):
        path = module.replace(".", "/") + ".py"
        assert path in names, f"entry point module {module} is not in the wheel"
        assert re.search(rf"^(class|def) {attr}\b", wheel.read(path).decode(), re.MULTILINE)


def test_the_wheel_holds_the_whole_source_tree_and_nothing_else(
    wheel: zipfile.ZipFile,
) -> None:
    names = {n for n in wheel.namelist() if not n.startswith("sparegrid-")}
    tracked = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"]
        + [f"{source}/sparegrid" for source in SOURCES],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    wanted = {
        path.split("/", 1)[1]  # the source folder is stripped: proto/sparegrid/v1 -> sparegrid/v1
        for path in tracked
        if not path.endswith(".proto") and (ROOT / path).is_file()
    }
    assert wanted - names == set(), "missing from the wheel"
    assert names - wanted == set(), "in the wheel but not in the source tree"
    assert "sparegrid/coordinator/web/templates/volunteer.html" in names  # templates, static
    assert "sparegrid/coordinator/web/templates/style.css" in names
    assert "sparegrid/sdk/py.typed" in names
    assert "sparegrid/__init__.py" not in names  # a PEP 420 namespace
