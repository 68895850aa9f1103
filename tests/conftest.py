"""Fixtures for every test."""

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _private_config_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keys that clients pin (the coordinator's countersigning key) go to a temp dir,
    never to the user's ~/.config."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
