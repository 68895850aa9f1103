"""The node's identity: an Ed25519 key kept at data_dir/node.key (mode 0600), and the
lock that keeps a second worker off a data directory one is running on.

The data directory is made readable by this user only (mode 0700): its cache and outbox
hold the clients' inputs and outputs, which other users of a volunteer's machine have no
business reading."""

import fcntl
import os
from pathlib import Path

from sparegrid.wire import Signer
from sparegrid.wire.config import ConfigError

KEY_FILE = "node.key"
LOCK_FILE = "worker.lock"


def load_identity(data_dir: Path) -> Signer:
    """Loads the node key, creating it on first run; the node id follows from it."""
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    return Signer.load_or_create(data_dir / KEY_FILE)


def lock_data_dir(data_dir: Path) -> int:
    """Holds data_dir/worker.lock for as long as this process runs (the open descriptor,
    returned, is the lock; the kernel lets it go when the process ends, however it ends).
    ConfigError when another worker holds it: two workers on one data directory would be
    one node twice, each ending the other's session, sharing one outbox and status socket."""
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise ConfigError(
            f"another worker (pid {holder}) is running with data directory {data_dir}; stop "
            "it first (`sparegrid worker status` shows it), or give this one another "
            "--data-dir"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd
