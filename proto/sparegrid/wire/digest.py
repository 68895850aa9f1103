"""Content digests: lowercase hex SHA-256."""

import hashlib
import re

_DIGEST = re.compile(r"[0-9a-f]{64}")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def is_digest(value: str) -> bool:
    """True for a lowercase hex SHA-256 digest (64 characters)."""
    return _DIGEST.fullmatch(value) is not None
