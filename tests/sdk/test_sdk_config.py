"""Address, API key and TLS come from arguments, then the environment, then defaults."""

import stat
from pathlib import Path

import grpc
import pytest

from sparegrid.sdk import (
    AdminClient,
    AuthenticationError,
    Client,
    SparegridError,
    VerificationError,
    config,
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("SPAREGRID_COORDINATOR", "SPAREGRID_API_KEY", "SPAREGRID_ADMIN_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("SPAREGRID_TLS_CA", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))


def test_address_order(monkeypatch: pytest.MonkeyPatch) -> None:
    assert config.resolve_address() == "127.0.0.1:50051"
    monkeypatch.setenv("SPAREGRID_COORDINATOR", "grid.example:7000")
    assert config.resolve_address() == "grid.example:7000"
    assert config.resolve_address("10.0.0.1:1") == "10.0.0.1:1"


def test_empty_env_counts_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPAREGRID_COORDINATOR", "  ")
    assert config.resolve_address() == config.DEFAULT_ADDRESS


def test_api_key_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPAREGRID_API_KEY", "from-env")
    assert config.resolve_api_key() == "from-env"
    assert config.resolve_api_key("explicit") == "explicit"


def test_a_saved_key_is_the_last_resort_and_only_for_its_address(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = config.save_api_key("grid.example:7000", "sg_saved")
    assert path == config.api_key_path("grid.example:7000")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert config.Connection.resolve("grid.example:7000").api_key == "sg_saved"
    with pytest.raises(AuthenticationError):  # never sent to another coordinator
        config.Connection.resolve("grid.example:7001")
    monkeypatch.setenv("SPAREGRID_API_KEY", "from-env")
    assert config.Connection.resolve("grid.example:7000").api_key == "from-env"
    assert config.Connection.resolve("grid.example:7000", "explicit").api_key == "explicit"
    with pytest.raises(FileExistsError):  # a saved key is never replaced
        config.save_api_key("grid.example:7000", "sg_other")
    assert path.read_text() == "sg_saved\n"


def test_missing_api_key_is_a_clear_local_error() -> None:
    with pytest.raises(AuthenticationError) as info:
        config.resolve_api_key()
    assert info.value.code == "NO_API_KEY"
    assert str(info.value) == "no API key: set SPAREGRID_API_KEY or pass api_key="
    with pytest.raises(AuthenticationError, match="SPAREGRID_API_KEY"):
        Client("127.0.0.1:1")


def test_metadata_is_bearer() -> None:
    conn = config.Connection.resolve("h:1", "k3y")
    assert conn.metadata == (("authorization", "Bearer k3y"),)
    assert conn.tls_ca is None
    assert conn.credentials() is None


def test_tls_ca_from_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    monkeypatch.setenv("SPAREGRID_TLS_CA", str(ca))
    conn = config.Connection.resolve("h:1", "k")
    assert conn.tls_ca == ca
    assert isinstance(conn.credentials(), grpc.ChannelCredentials)
    assert config.resolve_tls_ca(tmp_path / "other.pem") == tmp_path / "other.pem"


def test_missing_tls_ca_file_is_a_clear_error(tmp_path: Path) -> None:
    conn = config.Connection.resolve("h:1", "k", tmp_path / "nope.pem")
    with pytest.raises(SparegridError, match="cannot read TLS CA certificate") as info:
        conn.channel()
    assert info.value.code == "BAD_TLS_CA"


def test_client_uses_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPAREGRID_COORDINATOR", "127.0.0.1:9")
    monkeypatch.setenv("SPAREGRID_API_KEY", "abc")
    with Client() as client:
        assert client.address == "127.0.0.1:9"
        assert client.connection.metadata == (("authorization", "Bearer abc"),)


def test_admin_key_path(tmp_path: Path) -> None:
    path = config.admin_key_path("127.0.0.1:50051")
    assert path == tmp_path / "config" / "sparegrid" / "admin" / "127.0.0.1_50051.key"
    assert config.admin_key_path("[::1]:7").name == "::1_7.key"


def test_admin_key_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    address = "127.0.0.1:4242"
    recorded = config.admin_key_path(address)
    recorded.parent.mkdir(parents=True)
    recorded.write_text("from-xdg\n")
    assert config.resolve_admin_key(address) == "from-xdg"
    monkeypatch.setenv("SPAREGRID_ADMIN_KEY", "from-env")
    assert config.resolve_admin_key(address) == "from-env"
    key_file = tmp_path / "admin.key"
    key_file.write_text("from-file\n")
    assert config.resolve_admin_key(address, key_file=key_file) == "from-file"
    assert config.resolve_admin_key(address, "explicit", key_file) == "explicit"


def test_no_admin_key_names_all_three_options() -> None:
    with pytest.raises(AuthenticationError) as info:
        AdminClient("127.0.0.1:4343")
    message = str(info.value)
    assert "--admin-key-file" in message
    assert "SPAREGRID_ADMIN_KEY" in message
    assert "127.0.0.1_4343.key" in message
    assert info.value.code == "NO_ADMIN_KEY"


def test_unreadable_admin_key_file(tmp_path: Path) -> None:
    with pytest.raises(AuthenticationError, match="cannot read admin key file"):
        config.resolve_admin_key("h:1", key_file=tmp_path / "missing.key")


def test_a_list_of_coordinators_pins_one_key_under_each_address() -> None:
    first, second = "10.0.0.1:50051", "10.0.0.2:50051"
    key, other = bytes(range(32)), bytes(32)
    assert config.pin_coordinator_key(f"{first},{second}", key) == key
    assert [p.name for p in config.coordinator_key_paths(f"{second},{first}")] == [
        "10.0.0.2_50051.pub",
        "10.0.0.1_50051.pub",
    ]
    for path in config.coordinator_key_paths(f"{first},{second}"):
        assert path.read_text() == key.hex() + "\n"
    assert config.pin_coordinator_key(second, key) == key  # the standby, named alone
    with pytest.raises(VerificationError) as info:
        config.pin_coordinator_key(f"{second},10.0.0.3:50051", other)
    assert info.value.code == "COORDINATOR_KEY_CHANGED"
    assert "10.0.0.2_50051.pub" in str(info.value)
