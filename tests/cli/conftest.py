"""A fake coordinator on 127.0.0.1:<free> and a runner for `sparegrid` commands."""

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from sparegrid.cli.main import main
from sparegrid.sdk.testing import FakeCoordinator, serve_fake


@dataclass
class Outcome:
    code: int
    out: str
    err: str


@dataclass
class FakeGrid:
    coordinator: FakeCoordinator
    address: str
    api_key: str


Cli = Callable[..., Awaitable[Outcome]]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in (
        "SPAREGRID_COORDINATOR",
        "SPAREGRID_API_KEY",
        "SPAREGRID_ADMIN_KEY",
        "SPAREGRID_TLS_CA",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("COLUMNS", "200")


@pytest.fixture
async def grid(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeGrid]:
    fake = FakeCoordinator(tick=0.002)
    key = fake.add_account("alice", credit=1000)
    server, address = await serve_fake(fake)
    monkeypatch.setenv("SPAREGRID_COORDINATOR", address)
    monkeypatch.setenv("SPAREGRID_API_KEY", key)
    yield FakeGrid(fake, address, key)
    await fake.stop()
    await server.stop(None)


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Cli:
    """Runs `sparegrid ARGS...` in a thread (the fake serves on this test's loop)."""

    async def run(*argv: str) -> Outcome:
        capsys.readouterr()
        code = await asyncio.to_thread(main, list(argv))
        captured = capsys.readouterr()
        return Outcome(code, captured.out, captured.err)

    return run
