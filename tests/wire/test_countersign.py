"""The coordinator countersigns the receipts of one job's accepted results with one
signature over the Merkle root of their Validations: each receipt verifies on its own,
offline, and none can be bent into another's. Receipts countersigned one at a time, as
before batches, still verify."""

import hashlib

import pytest

from sparegrid.v1 import common_pb2
from sparegrid.wire import Signer
from sparegrid.wire.receipt import (
    countersign_batch,
    make_receipts,
    sign_batch,
    verify_countersignature,
)
from sparegrid.wire.signing import VALIDATION_TAG, BadSignature

COORDINATOR = Signer.generate()


def receipts(count: int) -> list[common_pb2.Receipt]:
    node = Signer.generate()
    statements = [
        common_pb2.ResultStatement(
            job_id="job1", task_id=f"job1-{i}", attempt_id=f"a{i}", node_id=node.node_id
        ).SerializeToString()
        for i in range(count)
    ]
    return make_receipts(statements, sign_batch(node, statements), node.public_key)


def validation(i: int) -> common_pb2.Validation:
    return common_pb2.Validation(
        job_id="job1",
        task_id=f"job1-{i}",
        attempt_id=f"a{i}",
        method=common_pb2.VALIDATION_METHOD_QUORUM,
        credit=3,
    )


def countersigned(count: int) -> list[common_pb2.Receipt]:
    pairs = [(r, validation(i)) for i, r in enumerate(receipts(count))]
    return countersign_batch(COORDINATOR, pairs)


def copy(receipt: common_pb2.Receipt) -> common_pb2.Receipt:
    out = common_pb2.Receipt()
    out.CopyFrom(receipt)
    return out


@pytest.mark.parametrize("count", [1, 2, 5, 64])
def test_each_receipt_of_a_batch_verifies_alone(count: int) -> None:
    signed = countersigned(count)
    assert len({r.coordinator_signature for r in signed}) == 1  # one signature
    for i, receipt in enumerate(signed):
        checked = verify_countersignature(receipt, COORDINATOR.public_key)
        assert checked.task_id == f"job1-{i}"
        assert checked.statement_digest == hashlib.sha256(receipt.statement).digest()


def test_a_validation_changed_after_signing_fails() -> None:
    receipt = copy(countersigned(4)[2])
    changed = common_pb2.Validation.FromString(receipt.validation)
    changed.credit = 3_000_000
    receipt.validation = changed.SerializeToString()
    with pytest.raises(BadSignature, match="does not verify"):
        verify_countersignature(receipt, COORDINATOR.public_key)


def test_a_receipt_cannot_borrow_another_leaf_of_its_batch() -> None:
    signed = countersigned(4)
    # task 2's statement with task 3's validation and path: the validation names
    # another statement
    receipt = copy(signed[2])
    receipt.validation = signed[3].validation
    receipt.validation_index = signed[3].validation_index
    del receipt.validation_proof[:]
    receipt.validation_proof.extend(signed[3].validation_proof)
    with pytest.raises(BadSignature, match="another result statement"):
        verify_countersignature(receipt, COORDINATOR.public_key)
    # task 2's own validation at task 3's place: the path leads elsewhere
    receipt = copy(signed[2])
    receipt.validation_index = 3
    with pytest.raises(BadSignature, match="does not verify"):
        verify_countersignature(receipt, COORDINATOR.public_key)


@pytest.mark.parametrize(
    "bend",
    [
        lambda r: setattr(r, "validation_count", 1),  # a path too long for the count
        lambda r: setattr(r, "validation_count", 9),
        lambda r: setattr(r, "validation_index", 4),  # outside the tree
        lambda r: r.validation_proof.pop(),
        lambda r: r.validation_proof.append(b"\x00" * 32),
    ],
)
def test_a_bent_path_fails(bend) -> None:
    receipt = copy(countersigned(4)[1])
    bend(receipt)
    with pytest.raises(BadSignature):
        verify_countersignature(receipt, COORDINATOR.public_key)


def test_a_batch_signature_is_no_signature_of_one_validation() -> None:
    """The root of a batch of one is signed under its own tag: dropping the batch fields
    does not turn it into a receipt countersigned alone."""
    receipt = copy(countersigned(1)[0])
    receipt.validation_count = 0
    del receipt.validation_proof[:]
    with pytest.raises(BadSignature, match="does not verify"):
        verify_countersignature(receipt, COORDINATOR.public_key)


def test_another_key_fails() -> None:
    with pytest.raises(BadSignature, match="does not verify"):
        verify_countersignature(countersigned(3)[0], Signer.generate().public_key)


def test_a_receipt_countersigned_alone_before_batches_still_verifies() -> None:
    [receipt] = receipts(1)
    v = validation(0)
    v.statement_digest = hashlib.sha256(receipt.statement).digest()
    old = copy(receipt)
    old.validation = v.SerializeToString()
    old.coordinator_signature = COORDINATOR.sign(VALIDATION_TAG, old.validation)
    assert verify_countersignature(old, COORDINATOR.public_key).task_id == "job1-0"
