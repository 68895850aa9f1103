"""TLS: given a certificate and key the coordinator serves TLS only; the SDK trusts a CA."""

import datetime
import ipaddress
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sparegrid.coordinator.app import App, Settings
from sparegrid.coordinator.server import Tls, build_server
from sparegrid.coordinator.store.memory import MemoryStore
from sparegrid.sdk import AsyncClient
from sparegrid.sdk.errors import SparegridError


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


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
