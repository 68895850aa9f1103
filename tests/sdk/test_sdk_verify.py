"""Receipts built with sparegrid.wire verify; each kind of tampering fails, saying what."""

import dataclasses

import pytest

from sparegrid.sdk import OutputRef, TaskState, VerificationError
from sparegrid.sdk.results import verify_all
from sparegrid.sdk.testing import signed_results
from sparegrid.v1 import common_pb2
from sparegrid.wire import Signer, sha256_hex
from sparegrid.wire.receipt import make_receipts, sign_batch

OUTPUTS = [{"sha256": b"a" * 64}, {"sha256": b"b" * 64, "log": b"done"}, {"sha256": b"c" * 64}]


def test_good_receipts_verify() -> None:
    signer = Signer.generate()
    results = signed_results("job1", OUTPUTS, signer)
    for result in results:
        result.verify()
        result.verify(public_key=signer.public_key)
    assert results[1].output("log") == b"done"


def test_tampered_statement_fails() -> None:
    result = signed_results("job1", OUTPUTS)[0]
    assert result.receipt is not None
    receipt = common_pb2.Receipt()
    receipt.CopyFrom(result.receipt)
    receipt.statement = receipt.statement.replace(b"job1", b"job2")
    with pytest.raises(VerificationError, match="signature does not match"):
        dataclasses.replace(result, receipt=receipt).verify()


def test_receipt_resigned_by_another_key_fails() -> None:
    result = signed_results("job1", OUTPUTS)[0]
    assert result.receipt is not None
    other = Signer.generate()
    receipt = common_pb2.Receipt()
    receipt.CopyFrom(result.receipt)
    receipt.public_key = other.public_key
    with pytest.raises(VerificationError, match="signature does not match"):
        dataclasses.replace(result, receipt=receipt).verify()


def test_expected_public_key_is_enforced() -> None:
    result = signed_results("job1", OUTPUTS)[0]
    with pytest.raises(VerificationError, match="another public key"):
        result.verify(public_key=Signer.generate().public_key)


def test_swapped_output_digest_fails() -> None:
    result = signed_results("job1", OUTPUTS)[0]
    forged = OutputRef("sha256", sha256_hex(b"forged"), 64)
    with pytest.raises(VerificationError, match=r"output 'sha256' is .* but the receipt states"):
        dataclasses.replace(result, outputs=[forged]).verify()


def test_missing_and_extra_outputs_fail() -> None:
    result = signed_results("job1", OUTPUTS)[1]
    with pytest.raises(VerificationError, match="receipt names output 'log' not returned"):
        dataclasses.replace(result, outputs=result.outputs[:1]).verify()
    extra = [*result.outputs, OutputRef("more", sha256_hex(b"x"), 1)]
    with pytest.raises(VerificationError, match="output 'more' is not in the receipt"):
        dataclasses.replace(result, outputs=extra).verify()


def test_wrong_task_id_fails() -> None:
    results = signed_results("job1", OUTPUTS)
    with pytest.raises(VerificationError, match="receipt is for task 'job1-t0', not 'job1-t1'"):
        dataclasses.replace(results[0], task_id="job1-t1").verify()


def test_wrong_job_and_node_fail() -> None:
    result = signed_results("job1", OUTPUTS)[0]
    with pytest.raises(VerificationError, match="receipt is for job 'job1', not 'job9'"):
        dataclasses.replace(result, job_id="job9").verify()
    with pytest.raises(VerificationError, match="receipt is for node"):
        dataclasses.replace(result, node_id="0" * 16).verify()


def test_statement_naming_another_node_fails() -> None:
    signer = Signer.generate()
    statement = common_pb2.ResultStatement(
        job_id="j", task_id="t", node_id="ffffffffffffffff"
    ).SerializeToString()
    receipt = make_receipts([statement], sign_batch(signer, [statement]), signer.public_key)[0]
    result = dataclasses.replace(
        signed_results("j", [{}], signer)[0], task_id="t", receipt=receipt, outputs=[]
    )
    with pytest.raises(VerificationError, match="statement names node 'ffffffffffffffff'"):
        result.verify()


def test_bad_merkle_proof_fails() -> None:
    result = signed_results("job1", OUTPUTS)[0]
    assert result.receipt is not None
    receipt = common_pb2.Receipt()
    receipt.CopyFrom(result.receipt)
    receipt.leaf_index = 7
    with pytest.raises(VerificationError, match="Merkle proof is malformed"):
        dataclasses.replace(result, receipt=receipt).verify()


def test_missing_receipt_fails() -> None:
    result = dataclasses.replace(signed_results("job1", OUTPUTS)[0], receipt=None)
    with pytest.raises(VerificationError, match=r"task 0 \(job1-t0\) has no receipt"):
        result.verify()


def test_inline_output_is_digest_checked() -> None:
    result = signed_results("job1", OUTPUTS)[0]
    ref = result.outputs[0]
    tampered = dataclasses.replace(result, inline_outputs={ref.digest: b"z" * 64})
    with pytest.raises(VerificationError) as info:
        tampered.output("sha256")
    assert info.value.code == "DIGEST_MISMATCH"


def test_verify_all_reports_without_raising() -> None:
    results = signed_results("job1", OUTPUTS)
    results[2] = dataclasses.replace(results[2], task_id="other")
    results.append(dataclasses.replace(results[0], index=3, state=TaskState.FAILED, receipt=None))
    report = verify_all(results)
    assert report.ok == 2
    assert report.skipped == 1
    assert not report.passed
    assert [(f.index, f.task_id) for f in report.failures] == [(2, "other")]
    assert "not 'other'" in report.failures[0].reason
