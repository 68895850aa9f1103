"""Signing result batches and checking the receipts cut from them."""

import hashlib
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from sparegrid.v1 import common_pb2
from sparegrid.wire.merkle import MerkleTree, merkle_root, root_from_proof
from sparegrid.wire.signing import (
    RESULT_BATCH_TAG,
    VALIDATION_BATCH_TAG,
    VALIDATION_TAG,
    BadSignature,
    Signer,
    node_id_for,
    verify,
)

# What one result may carry: the coordinator refuses more, whatever the worker was told.
MAX_OUTPUTS = 1024  # outputs one result names
MAX_OUTPUT_NAME = 256  # characters of an output's name
# bytes of one output sent inline in its batch rather than uploaded (a worker's
# --inline-limit goes no higher), and of all one result's inline outputs together
MAX_INLINE_OUTPUT = 4 << 20
MAX_INLINE_RESULT = 16 << 20


def sign_batch(signer: Signer, statements: list[bytes]) -> bytes:
    """One signature over the Merkle root of serialised ResultStatements."""
    return signer.sign(RESULT_BATCH_TAG, merkle_root(statements))


def verify_batch(public_key: bytes, statements: list[bytes], signature: bytes) -> None:
    """Raises BadSignature unless the batch was signed by `public_key`."""
    if not statements:
        raise BadSignature("a result batch holds no statements")
    verify(public_key, RESULT_BATCH_TAG, merkle_root(statements), signature)


def decode_statement(data: bytes) -> common_pb2.ResultStatement:
    statement = common_pb2.ResultStatement()
    try:
        statement.ParseFromString(data)
    except DecodeError as exc:
        raise BadSignature(f"result statement does not decode: {exc}") from exc
    return statement


def make_receipts(
    statements: list[bytes], signature: bytes, public_key: bytes
) -> list[common_pb2.Receipt]:
    """A receipt per statement: each proves its statement alone, not its neighbours."""
    tree = MerkleTree(statements)
    return [
        common_pb2.Receipt(
            statement=data,
            leaf_index=i,
            leaf_count=len(statements),
            proof=tree.proof(i),
            signature=signature,
            public_key=public_key,
        )
        for i, data in enumerate(statements)
    ]


@dataclass(frozen=True)
class VerifiedReceipt:
    node_id: str
    statement: common_pb2.ResultStatement


def verify_receipt(receipt: common_pb2.Receipt) -> VerifiedReceipt:
    """Checks the Merkle path and the node's signature, then decodes the statement.

    Raises BadSignature saying what failed. The caller still checks that the statement
    names the task it expects and that the outputs it holds match the digests.
    """
    try:
        root = root_from_proof(
            receipt.statement, receipt.leaf_index, receipt.leaf_count, list(receipt.proof)
        )
    except ValueError as exc:
        raise BadSignature(f"receipt's Merkle proof is malformed: {exc}") from exc
    verify(receipt.public_key, RESULT_BATCH_TAG, root, receipt.signature)
    statement = decode_statement(receipt.statement)
    node_id = node_id_for(receipt.public_key)
    if statement.node_id != node_id:
        raise BadSignature(
            f"statement names node {statement.node_id!r} but was signed by node {node_id!r}"
        )
    return VerifiedReceipt(node_id=node_id, statement=statement)


def countersign(
    signer: Signer, receipt: common_pb2.Receipt, validation: common_pb2.Validation
) -> common_pb2.Receipt:
    """A copy of the node's receipt with the coordinator's signed Validation added."""
    return countersign_batch(signer, [(receipt, validation)])[0]


def countersign_batch(
    signer: Signer, pairs: list[tuple[common_pb2.Receipt, common_pb2.Validation]]
) -> list[common_pb2.Receipt]:
    """Copies of the node receipts with the coordinator's Validations added, all signed
    with one signature over the Merkle root of the serialised Validations, as a worker
    signs its result batch (a signature costs 50-100 us; a leaf, a hash). Each receipt
    carries its leaf's index and path. Each validation's statement digest is set here,
    from its receipt's statement bytes. Sign the validations of one client's job
    together: a path holds the hashes of the others."""
    for receipt, validation in pairs:
        validation.statement_digest = hashlib.sha256(receipt.statement).digest()
    leaves = [validation.SerializeToString() for _, validation in pairs]
    tree = MerkleTree(leaves)
    signature = signer.sign(VALIDATION_BATCH_TAG, tree.root)
    signed = []
    for index, ((receipt, _), leaf) in enumerate(zip(pairs, leaves, strict=True)):
        copy = common_pb2.Receipt()
        copy.CopyFrom(receipt)
        copy.validation = leaf
        copy.coordinator_signature = signature
        copy.validation_index, copy.validation_count = index, len(leaves)
        copy.validation_proof.extend(tree.proof(index))
        signed.append(copy)
    return signed


def verify_countersignature(
    receipt: common_pb2.Receipt, coordinator_key: bytes
) -> common_pb2.Validation:
    """Checks the coordinator's signature and that its Validation names this very
    statement; returns the Validation. Raises BadSignature saying what failed."""
    if not receipt.validation or not receipt.coordinator_signature:
        raise BadSignature("receipt carries no coordinator countersignature")
    try:
        if receipt.validation_count:
            root = root_from_proof(
                receipt.validation,
                receipt.validation_index,
                receipt.validation_count,
                list(receipt.validation_proof),
            )
            verify(coordinator_key, VALIDATION_BATCH_TAG, root, receipt.coordinator_signature)
        else:  # countersigned alone, before batches
            verify(
                coordinator_key, VALIDATION_TAG, receipt.validation, receipt.coordinator_signature
            )
    except ValueError as exc:
        raise BadSignature(f"countersignature's Merkle proof is malformed: {exc}") from exc
    except BadSignature as exc:
        raise BadSignature(f"coordinator countersignature does not verify: {exc}") from exc
    validation = common_pb2.Validation()
    try:
        validation.ParseFromString(receipt.validation)
    except DecodeError as exc:
        raise BadSignature(f"countersigned validation does not decode: {exc}") from exc
    if validation.statement_digest != hashlib.sha256(receipt.statement).digest():
        raise BadSignature("countersignature is for another result statement")
    if validation.method == common_pb2.VALIDATION_METHOD_UNSPECIFIED:
        raise BadSignature("countersigned validation states no method")
    return validation
