import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc import aio

from sparegrid.cli.main import main
from sparegrid.coordinator.app import App
from sparegrid.coordinator.cli import ensure_admin
from sparegrid.coordinator.server import build_server
from sparegrid.coordinator.settings import Settings
from sparegrid.coordinator.store.base import Store
from sparegrid.coordinator.store.sqlite import SqliteStore


@dataclass
class Served:
    app: App
    address: str
    channel: aio.Channel
    admin_key: str
    alice_key: str
    bob_key: str

    def auth(self, key: str) -> tuple[tuple[str, str]]:
        return (("authorization", f"Bearer {key}"),)


def store_kinds() -> list[str]:
    backends = ["sqlite"]
    if os.environ.get("SPAREGRID_TEST_POSTGRES"):
        backends.append("postgres")
    return backends


def open_backend(kind: str, tmp_path: Path, schema: str) -> Store:
    if kind == "sqlite":
        return SqliteStore(tmp_path / "coordinator.db")
    from sparegrid.coordinator.store.postgres import PostgresStore

    return PostgresStore(os.environ["SPAREGRID_TEST_POSTGRES"], schema=schema)


@asynccontextmanager
async def serving(
    kind: str, tmp_path: Path, make: Callable[[Store], App]
) -> AsyncIterator[tuple[App, str, aio.Channel]]:
    """A coordinator on loopback over a fresh store of `kind` ("sqlite", "postgres": a
    schema of its own, dropped after), the app built by `make` before it serves."""
    schema = f"t_{uuid.uuid4().hex}"
    app = make(open_backend(kind, tmp_path, schema))
    server, port = await build_server(app, "127.0.0.1:0")
    app.start()
    await server.start()
    address = f"127.0.0.1:{port}"
    channel = aio.insecure_channel(address, options=[("grpc.max_send_message_length", 128 << 20)])
    try:
        yield app, address, channel
    finally:
        await channel.close()
        await server.stop(grace=None)
        await app.stop()
        await asyncio.sleep(0)
        if kind == "postgres":
            drop_schema(schema)


@pytest.fixture(params=store_kinds())
async def served(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Served]:
    """A coordinator on loopback, on SQLite and (when configured) on PostgreSQL."""
    settings = Settings(data_dir=tmp_path, max_blob_size=10 << 20, lease_seconds=5.0)
    async with served_with(request.param, tmp_path, settings) as served:
        yield served


@asynccontextmanager
async def served_with(kind: str, tmp_path: Path, settings: Settings) -> AsyncIterator[Served]:
    """A coordinator with these settings on the store `kind`, with its admin, alice and bob
    (accounts_of): for a test module's own `served`-like fixture."""
    async with serving(kind, tmp_path, lambda store: App(store, settings)) as (
        app,
        address,
        channel,
    ):
        yield accounts_of(app, address, channel, tmp_path)


def accounts_of(
    app: App, address: str, channel: aio.Channel, tmp_path: Path, credit: int = 100
) -> Served:
    """The admin, alice and bob (new accounts granted `credit` each) of a served app."""
    key_file = ensure_admin(app, tmp_path)
    _, alice_key = app.accounts.create("alice", credit)
    _, bob_key = app.accounts.create("bob", credit)
    return Served(app, address, channel, key_file.read_text().strip(), alice_key, bob_key)


def drop_schema(schema: str) -> None:
    import psycopg

    with psycopg.connect(os.environ["SPAREGRID_TEST_POSTGRES"], autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')  # type: ignore[arg-type]


def code_of(error: grpc.aio.AioRpcError) -> str:
    return dict(error.trailing_metadata() or ()).get("sparegrid-code", "")


@dataclass
class Outcome:
    code: int
    out: str
    err: str


Cli = Callable[..., Awaitable[Outcome]]


@pytest.fixture
def cli(
    served: Served,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> Cli:
    """`sparegrid ARGS...` in a thread (the coordinator serves on this test's loop), as the
    admin unless SPAREGRID_API_KEY-style keys are passed in `key`."""
    for name in ("SPAREGRID_API_KEY", "SPAREGRID_TLS_CA"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setenv("SPAREGRID_COORDINATOR", served.address)
    monkeypatch.setenv("SPAREGRID_ADMIN_KEY", served.admin_key)

    async def run(*argv: str, key: str = "") -> Outcome:
        if key:
            monkeypatch.setenv("SPAREGRID_API_KEY", key)
        capsys.readouterr()
        code = await asyncio.to_thread(main, list(argv))
        captured = capsys.readouterr()
        monkeypatch.delenv("SPAREGRID_API_KEY", raising=False)
        return Outcome(code, captured.out, captured.err)

    return run
