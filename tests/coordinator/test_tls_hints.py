"""TLS without a CA file (the system's trust roots), and hints that name the likely cause
of a failed connection, each against real servers: a plaintext client against a TLS
coordinator, a TLS client against a plaintext one, a wrong port (nothing there, or
something that is not a coordinator)."""

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from sparegrid.cli.main import main
from sparegrid.coordinator.app import App
from sparegrid.coordinator.cli import ensure_admin
from sparegrid.coordinator.server import Tls, build_server
from sparegrid.coordinator.settings import Settings
from sparegrid.coordinator.store.memory import MemoryStore
from sparegrid.sdk import AsyncClient, SparegridError
from sparegrid.sdk.config import admin_key_path
from sparegrid.wire.tls import Speaks, hint, probe
from sparegrid.worker.testing.harness import make_config, running_worker, wait_until
from tests.coordinator.certs import self_signed


@contextlib.asynccontextmanager
async def coordinator(tmp_path: Path, tls: Tls | None) -> AsyncIterator[tuple[str, App]]:
    app = App(MemoryStore(), Settings(data_dir=tmp_path / "coord"))
    ensure_admin(app, tmp_path / "coord")
    server, port = await build_server(app, "127.0.0.1:0", tls)
    app.start()
    await server.start()
    try:
        yield f"127.0.0.1:{port}", app
    finally:
        await server.stop(grace=None)
        await app.stop()


@contextlib.contextmanager
def free_port() -> Iterator[int]:
    """A port nothing listens on (held closed while the test runs)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


def test_nothing_answering_may_be_a_standby() -> None:
    """An operator who ran `admin nodes --coordinator B` against a coordinator standing by
    (it does not listen) was told to start a coordinator, though one was running."""
    with free_port() as port:
        text = hint(f"127.0.0.1:{port}", using_tls=False)
    assert "a coordinator standing by listens only once it takes over" in text
    assert "give every coordinator's address, A,B" in text


@contextlib.asynccontextmanager
async def not_a_coordinator() -> AsyncIterator[str]:
    """A TCP server that answers like an SMTP server."""

    async def greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 mail.example.org ESMTP\r\n")
        with contextlib.suppress(ConnectionError):
            await writer.drain()
            await reader.read(100)
        writer.close()

    server = await asyncio.start_server(greet, "127.0.0.1", 0)
    try:
        yield f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        await server.wait_closed()


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path):  # type: ignore[no-untyped-def]
    for name in (
        "SPAREGRID_COORDINATOR",
        "SPAREGRID_ADMIN_KEY",
        "SPAREGRID_TLS_CA",
        "SPAREGRID_TLS",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("SPAREGRID_API_KEY", "sg_whatever")

    async def run(*argv: str) -> tuple[int, str]:
        capsys.readouterr()
        code = await asyncio.to_thread(main, list(argv))
        captured = capsys.readouterr()
        return code, " ".join((captured.out + captured.err).split())

    return run


async def test_tls_without_a_ca_file_uses_the_system_trust_roots(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key = self_signed(tmp_path)
    async with coordinator(tmp_path, Tls(cert, key)) as (address, app):
        _, api_key = app.accounts.create("alice", 10)
        (tmp_path / "other").mkdir()
        other, _ = self_signed(tmp_path / "other")
        monkeypatch.setenv("SSL_CERT_FILE", str(other))  # a trust store without our CA
        client = AsyncClient(address, api_key=api_key, tls=True, timeout=3)
        with pytest.raises(SparegridError):
            await client.account()
        await client.close()
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # the system trusts it now
        async with AsyncClient(address, api_key=api_key, tls=True) as client:
            assert (await client.account()).balance == 10
        monkeypatch.setenv("SPAREGRID_TLS", "1")  # the same from the environment
        async with AsyncClient(address, api_key=api_key) as client:
            assert (await client.account()).balance == 10


async def test_probe_tells_tls_plaintext_nothing_and_other(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    async with (
        coordinator(tmp_path / "a", Tls(cert, key)) as (tls_address, _),
        coordinator(tmp_path / "b", None) as (plain_address, _),
        not_a_coordinator() as smtp,
    ):
        with free_port() as port:
            found = await asyncio.gather(
                *(
                    asyncio.to_thread(probe, a)
                    for a in (tls_address, plain_address, f"127.0.0.1:{port}", smtp)
                )
            )
    assert found == [Speaks.TLS, Speaks.PLAINTEXT, Speaks.NOTHING, Speaks.OTHER]


async def test_a_plaintext_client_against_tls_is_told_to_use_tls(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    cert, key = self_signed(tmp_path)
    async with coordinator(tmp_path, Tls(cert, key)) as (address, _):
        code, text = await cli("job", "list", "--coordinator", address)
    assert code == 1
    assert f"the coordinator at {address} speaks TLS, and this side plaintext" in text
    assert "pass --tls (a publicly trusted certificate) or --tls-ca PEM" in text
    assert "coordinator serve" not in text.split("hint:")[1]  # not "start one"


async def test_a_tls_client_against_plaintext_is_told_to_drop_tls(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    cert, _ = self_signed(tmp_path)
    async with coordinator(tmp_path, None) as (address, _):
        code, text = await cli("job", "list", "--coordinator", address, "--tls-ca", str(cert))
        assert code == 1
        assert f"the coordinator at {address} speaks plaintext, and this side TLS" in text
        code, text = await cli("job", "list", "--coordinator", address, "--tls")
    assert code == 1 and "speaks plaintext, and this side TLS: drop --tls" in text
    assert ": OK [" not in text  # gRPC's bare "OK" for a failed handshake is said in words


async def test_a_wrong_port_is_named_not_blamed_on_the_admin_key(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    async with coordinator(tmp_path, None) as (address, _):
        record = admin_key_path(address)  # as `coordinator serve` records it
        record.parent.mkdir(parents=True)
        record.write_text((tmp_path / "coord" / "admin.key").read_text())
        assert (await cli("admin", "nodes", "--coordinator", address))[0] == 0
        with free_port() as port:
            wrong = f"127.0.0.1:{port}"
            code, text = await cli("admin", "nodes", "--coordinator", wrong)
        assert code == 1 and "[NO_ADMIN_KEY]" in text
        assert f"nothing answers at {wrong}: is the address (and its port) right?" in text
        assert f"recorded admin keys for: {address}" in text
        async with not_a_coordinator() as smtp:
            code, text = await cli("job", "list", "--coordinator", smtp)
            assert code == 1
            assert f"something listens at {smtp}, but not a Sparegrid coordinator" in text
            code, text = await cli("admin", "nodes", "--coordinator", smtp)
        assert "[NO_ADMIN_KEY]" in text and "not a Sparegrid coordinator" in text
        with free_port() as port:
            code, text = await cli("job", "list", "--coordinator", f"127.0.0.1:{port}")
        assert code == 1 and "nothing answers at" in text


async def test_an_address_written_as_a_url_or_without_a_port_is_told_so(cli) -> None:  # type: ignore[no-untyped-def]
    """gRPC's words were "Misformatted domain name" and "Connection refused" (it dialled
    443), with the hint asking whether anything runs there."""
    with free_port() as port:
        code, text = await cli("job", "list", "--coordinator", f"http://127.0.0.1:{port}/")
        assert code == 1
        assert "is a URL; a coordinator's address is HOST:PORT, without http://" in text
        assert f"(--coordinator 127.0.0.1:{port})" in text
    code, text = await cli("job", "list", "--coordinator", "localhost")
    assert code == 1
    assert "localhost names no port" in text and "--coordinator localhost:50051" in text


async def test_a_worker_uses_system_roots_and_logs_the_likely_cause(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    cert, key = self_signed(tmp_path)
    caplog.set_level(logging.INFO)
    async with coordinator(tmp_path, Tls(cert, key)) as (address, app):
        plain = make_config(tmp_path / "w1", address)
        async with running_worker(plain):
            await wait_until(lambda: "hint:" in caplog.text)
        assert "speaks TLS, and this side plaintext: pass --tls" in caplog.text
        assert not app.scheduler.sessions
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))
        secure = make_config(tmp_path / "w2", address, tls=True)
        async with running_worker(secure):
            await wait_until(lambda: bool(app.scheduler.sessions))
