"""Task logs: the tail of what an attempt's executor wrote, signed by the node that ran it.

The node signs a LogStatement (the attempt it names, the outcome and the SHA-256 of the
text) with its own domain tag, so a log can be checked on its own, by the coordinator as
it comes in and by the job's owner when it is read, and is never mistaken for a result.
"""

import hashlib
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from sparegrid.v1 import common_pb2
from sparegrid.wire.signing import TASK_LOG_TAG, BadSignature, Signer, node_id_for, verify

MAX_LOG_BYTES = 64 * 1024  # the most text a log may hold: a worker keeps the last this many
SUCCEEDED = "succeeded"  # the outcome of a log kept for a result (else the failure code)


class LogTooLarge(BadSignature):
    """A log holds more than MAX_LOG_BYTES of text."""


def sign_log(
    signer: Signer, job_id: str, task_id: str, attempt_id: str, outcome: str, text: bytes
) -> common_pb2.TaskLog:
    statement = common_pb2.LogStatement(
        job_id=job_id,
        task_id=task_id,
        attempt_id=attempt_id,
        node_id=signer.node_id,
        outcome=outcome,
        text_digest=hashlib.sha256(text).digest(),
    ).SerializeToString(deterministic=True)
    return common_pb2.TaskLog(
        statement=statement, signature=signer.sign(TASK_LOG_TAG, statement), text=text
    )


@dataclass(frozen=True)
class VerifiedLog:
    statement: common_pb2.LogStatement
    text: bytes


def verify_log(public_key: bytes, log: common_pb2.TaskLog) -> VerifiedLog:
    """Checks the size, the node's signature, that the statement names the signing node
    and that the text is the one it signed. Raises LogTooLarge or BadSignature saying
    what failed; the caller still checks the attempt it names."""
    if len(log.text) > MAX_LOG_BYTES:
        raise LogTooLarge(f"a task log holds at most {MAX_LOG_BYTES} bytes, got {len(log.text)}")
    verify(public_key, TASK_LOG_TAG, log.statement, log.signature)
    statement = common_pb2.LogStatement()
    try:
        statement.ParseFromString(log.statement)
    except DecodeError as exc:
        raise BadSignature(f"log statement does not decode: {exc}") from exc
    if statement.node_id != node_id_for(public_key):
        raise BadSignature(f"log statement names node {statement.node_id!r}, not its signer")
    if statement.text_digest != hashlib.sha256(log.text).digest():
        raise BadSignature("log text is not the text its statement signed")
    return VerifiedLog(statement, log.text)
