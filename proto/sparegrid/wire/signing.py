"""Ed25519 keys, node ids and domain-tagged signatures."""

import hashlib
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

# Every signed message starts with one of these tags, so a signature made for one purpose
# can never be replayed as another.
REGISTER_TAG = b"sparegrid/v1/register\x00"
RESULT_BATCH_TAG = b"sparegrid/v1/result-batch\x00"
# the coordinator's countersignature over a Validation of one result
VALIDATION_TAG = b"sparegrid/v1/validation\x00"
# the coordinator's countersignature over the Merkle root of several Validations
VALIDATION_BATCH_TAG = b"sparegrid/v1/validation-batch\x00"
# a node's LogStatement: the log of one attempt (wire/tasklog.py)
TASK_LOG_TAG = b"sparegrid/v1/task-log\x00"

PUBLIC_KEY_SIZE = 32
SIGNATURE_SIZE = 64


class BadSignature(Exception):
    """A signature, public key or signed structure did not check out."""


def node_id_for(public_key: bytes) -> str:
    """A node's id: the first 16 hex digits of SHA-256 over its raw public key."""
    if len(public_key) != PUBLIC_KEY_SIZE:
        raise BadSignature(f"an Ed25519 public key is 32 bytes, got {len(public_key)}")
    return hashlib.sha256(public_key).hexdigest()[:16]


def verify(public_key: bytes, tag: bytes, message: bytes, signature: bytes) -> None:
    """Raises BadSignature unless `signature` is `public_key`'s over `tag + message`."""
    if len(signature) != SIGNATURE_SIZE:
        raise BadSignature(f"an Ed25519 signature is 64 bytes, got {len(signature)}")
    try:
        key = Ed25519PublicKey.from_public_bytes(public_key)
        key.verify(signature, tag + message)
    except (InvalidSignature, ValueError) as exc:
        raise BadSignature("signature does not match the node's public key") from exc


class Signer:
    """An Ed25519 private key that signs tagged messages."""

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key
        self.public_key = key.public_key().public_bytes_raw()
        self.node_id = node_id_for(self.public_key)

    @classmethod
    def generate(cls) -> "Signer":
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def load_or_create(cls, path: Path) -> "Signer":
        """Loads the raw 32-byte private key at `path`, creating it (mode 0600) if absent."""
        if path.exists():
            mode = path.stat().st_mode & 0o777
            if mode & 0o077:
                raise PermissionError(
                    f"{path} is readable by others (mode {mode:o}); run: chmod 600 {path}"
                )
            raw = path.read_bytes()
            if len(raw) != 32:
                raise ValueError(f"{path} is not a sparegrid node key (expected 32 bytes)")
            return cls(Ed25519PrivateKey.from_private_bytes(raw))
        path.parent.mkdir(parents=True, exist_ok=True)
        key = Ed25519PrivateKey.generate()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key.private_bytes_raw())
            f.flush()
            os.fsync(f.fileno())
        return cls(key)

    def sign(self, tag: bytes, message: bytes) -> bytes:
        return self._key.sign(tag + message)
