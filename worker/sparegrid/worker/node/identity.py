"""The node's identity: an Ed25519 key kept at data_dir/node.key (mode 0600)."""

from pathlib import Path

from sparegrid.wire import Signer

KEY_FILE = "node.key"


def load_identity(data_dir: Path) -> Signer:
    """Loads the node key, creating it on first run; the node id follows from it."""
    data_dir.mkdir(parents=True, exist_ok=True)
    return Signer.load_or_create(data_dir / KEY_FILE)
