"""TLS: given a certificate and key the coordinator serves TLS only; the SDK trusts a CA."""

from pathlib import Path

import pytest

from sparegrid.coordinator.app import App
from sparegrid.coordinator.server import Tls, build_server
from sparegrid.coordinator.settings import Settings
from sparegrid.coordinator.store.memory import MemoryStore
from sparegrid.sdk import AsyncClient
from sparegrid.sdk.errors import SparegridError
from tests.coordinator.certs import self_signed


async def test_tls_serves_clients_that_trust_the_ca_only(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    app = App(MemoryStore(), Settings(data_dir=tmp_path))
    _, api_key = app.accounts.create("alice", 10)
    server, port = await build_server(app, "127.0.0.1:0", Tls(cert, key))
    app.start()
    await server.start()
    try:
        async with AsyncClient(f"127.0.0.1:{port}", api_key=api_key, tls_ca=cert) as client:
            assert (await client.account()).balance == 10
        plain = AsyncClient(f"127.0.0.1:{port}", api_key=api_key, timeout=2)
        with pytest.raises(SparegridError):  # a plaintext client cannot talk to it
            await plain.account()
        await plain.close()
    finally:
        await server.stop(grace=None)
        await app.stop()
