"""What the coordinator, the worker and the SDK share: the signed wire format (and file I/O).

Everything that is signed is exact bytes with a domain tag in front; nothing is ever
re-serialised before a signature is checked.
"""

from sparegrid.wire.digest import is_digest, sha256_hex
from sparegrid.wire.merkle import MerkleTree, merkle_root, root_from_proof
from sparegrid.wire.signing import (
    REGISTER_TAG,
    RESULT_BATCH_TAG,
    BadSignature,
    Signer,
    node_id_for,
    verify,
)

__all__ = [
    "REGISTER_TAG",
    "RESULT_BATCH_TAG",
    "BadSignature",
    "MerkleTree",
    "Signer",
    "is_digest",
    "merkle_root",
    "node_id_for",
    "root_from_proof",
    "sha256_hex",
    "verify",
]
