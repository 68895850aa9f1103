"""A Merkle tree over result statements, so one signature covers a batch.

Leaves and inner nodes are hashed with different prefixes (0x00 and 0x01) so a leaf can
never be passed off as an inner node. An odd node at the end of a level is promoted as is.
"""

import hashlib

_LEAF = b"\x00"
_NODE = b"\x01"


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(_LEAF + data).digest()


def _node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(_NODE + left + right).digest()


def _next_level(level: list[bytes]) -> list[bytes]:
    pairs = [_node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
    if len(level) % 2:
        pairs.append(level[-1])
    return pairs


class MerkleTree:
    """All levels of a tree, built once: the root and every leaf's proof come from it."""

    def __init__(self, leaves: list[bytes]) -> None:
        if not leaves:
            raise ValueError("a Merkle tree needs at least one leaf")
        self._levels = [[leaf_hash(leaf) for leaf in leaves]]
        while len(self._levels[-1]) > 1:
            self._levels.append(_next_level(self._levels[-1]))
        self.root = self._levels[-1][0]
        self.size = len(leaves)

    def proof(self, index: int) -> list[bytes]:
        """Sibling hashes from leaf `index` up to the root (promoted nodes add none)."""
        if not 0 <= index < self.size:
            raise IndexError(f"leaf {index} is outside a tree of {self.size}")
        proof: list[bytes] = []
        for level in self._levels[:-1]:
            sibling = index ^ 1
            if sibling < len(level):
                proof.append(level[sibling])
            index //= 2
        return proof


def merkle_root(leaves: list[bytes]) -> bytes:
    """Root over the given leaf data (not yet hashed)."""
    return MerkleTree(leaves).root


def root_from_proof(leaf: bytes, index: int, count: int, proof: list[bytes]) -> bytes:
    """The root that `leaf` at `index` in a tree of `count` leaves proves, or ValueError."""
    if not 0 <= index < count:
        raise ValueError(f"leaf index {index} is outside a tree of {count}")
    node = leaf_hash(leaf)
    rest = list(proof)
    width = count
    while width > 1:
        sibling = index ^ 1
        if sibling < width:
            if not rest:
                raise ValueError("Merkle proof is too short")
            other = rest.pop(0)
            node = _node_hash(other, node) if index % 2 else _node_hash(node, other)
        index //= 2
        width = (width + 1) // 2
    if rest:
        raise ValueError("Merkle proof is too long")
    return node
