"""The README's commands parse, and its Python examples run, against the fake coordinator."""

import asyncio
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from sparegrid.cli.main import build_parser
from tests.cli.conftest import FakeGrid
from tests.cli.readme import README, blocks


def commands() -> list[str]:
    """Every `sparegrid ...` command in the README's shell blocks, comments stripped."""
    found: list[str] = []
    for block in blocks("bash"):
        for line in block.splitlines():
            code = line.split("  #", 1)[0]
            found += [m.rstrip(")").strip() for m in re.findall(r"sparegrid [^|;&]*", code)]
    return found


def test_the_readme_has_what_it_promises() -> None:
    text = README.read_text()
    assert "## Performance" in text and "bench/results/dispatch-" in text
    assert len(blocks("python")) == 3  # Client, AsyncClient, inference (tests/e2e)
    assert any(c.startswith("sparegrid job submit") for c in commands())


@pytest.mark.parametrize("command", commands())
def test_every_readme_command_parses(command: str) -> None:
    argv = shlex.split(command.replace("$JOB", "job-1"))[1:]
    args = build_parser().parse_args(argv)
    assert callable(args.func)


@pytest.mark.parametrize("index", [0, 1], ids=["Client", "AsyncClient"])
async def test_python_example_runs(
    grid: FakeGrid,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    index: int,
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "file.bin").write_bytes(bytes(range(256)) * 40)
    code = compile(blocks("python")[index], f"README.md python block {index}", "exec")
    # in a thread: the fake coordinator serves on this test's event loop
    await asyncio.to_thread(exec, code, {"__name__": "__main__"})
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 100
    task, node, digest = lines[0].split()
    assert (task, node) == ("0", grid.coordinator.signer.node_id)
    assert re.fullmatch(r"[0-9a-f]{64}", digest)


def test_the_readme_prices_are_the_defaults() -> None:
    """One source of truth: the README's table, `coordinator serve --help` and `job prices`
    (tests/e2e/test_clients.py) all show prices.DEFAULT_PRICES."""
    from sparegrid.coordinator.services.prices import DEFAULT_PRICES, prices_text

    table = README.read_text().split("### Prices", 1)[1].split("###", 1)[0]
    rows = re.findall(r"^\| (\w+) \| ([\d/]+) \|", table, flags=re.MULTILINE)
    assert dict(rows) == {kind: str(price) for kind, price in DEFAULT_PRICES.items()}
    shown = subprocess.run(
        [sys.executable, "-m", "sparegrid.cli.main", "coordinator", "serve", "--help"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "COLUMNS": "100"},
    ).stdout
    assert f"defaults: {prices_text(DEFAULT_PRICES)};" in " ".join(shown.split())
