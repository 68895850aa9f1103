"""A database's coordinators countersign with one key: clients pin it, and the receipts it
holds name it. A coordinator whose data directory holds another key (made afresh, or a
wrong copy) refuses to serve from that database, saying which key it wants, and changes
nothing there."""

import shutil
from pathlib import Path

import pytest

from sparegrid.coordinator.cli import open_app
from sparegrid.coordinator.config import ServeConfig
from sparegrid.coordinator.settings import Settings
from sparegrid.coordinator.store import COORDINATOR_KEY
from sparegrid.coordinator.store.base import StoreError


def serving(data_dir: Path, database: Path) -> ServeConfig:
    return ServeConfig(Settings(data_dir=data_dir), database=f"sqlite:///{database}")


def test_a_coordinator_with_another_key_refuses_the_database(tmp_path: Path) -> None:
    database = tmp_path / "grid.db"
    app, store = open_app(serving(tmp_path / "first", database))
    first = app.signer.public_key.hex()
    assert store.claim_meta(COORDINATOR_KEY, "x") == first  # recorded by the first to serve
    store.close()
    with pytest.raises(StoreError) as refused:
        open_app(serving(tmp_path / "second", database))  # its key is made afresh
    message = str(refused.value)
    assert f"countersign with {first[:16]}" in message
    assert "copy coordinator.key from a coordinator that served from this database" in message
    # with the right key copied in, it serves; the first one's key stays the database's
    second = tmp_path / "second" / "coordinator.key"
    shutil.copy(tmp_path / "first" / "coordinator.key", second)
    app, store = open_app(serving(tmp_path / "second", database))
    assert app.signer.public_key.hex() == first
    assert store.claim_meta(COORDINATOR_KEY, "x") == first
    store.close()


def test_a_restarted_coordinator_serves_its_own_database(tmp_path: Path) -> None:
    config = serving(tmp_path / "coord", tmp_path / "grid.db")
    recorded = []
    for _ in range(2):  # a restart
        app, store = open_app(config)
        recorded.append((app.signer.public_key.hex(), store.claim_meta(COORDINATOR_KEY, "x")))
        store.close()
    assert recorded[0] == recorded[1]
    assert recorded[0][0] == recorded[0][1]
