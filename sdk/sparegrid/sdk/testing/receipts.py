"""Signed task results built the way a worker signs them, for tests of verification."""

from collections.abc import Sequence

from sparegrid.sdk.models import OutputRef, TaskState
from sparegrid.sdk.results import TaskResult
from sparegrid.v1 import common_pb2
from sparegrid.wire import Signer, sha256_hex
from sparegrid.wire.receipt import make_receipts, sign_batch


def signed_results(
    job_id: str, outputs: Sequence[dict[str, bytes]], signer: Signer | None = None
) -> list[TaskResult]:
    """One succeeded task per item of `outputs`, signed in one batch by `signer`.

    Every output travels inline, so `TaskResult.output` works without a client.
    """
    signer = signer or Signer.generate()
    refs = [
        [OutputRef(name, sha256_hex(data), len(data)) for name, data in task.items()]
        for task in outputs
    ]
    statements = [
        common_pb2.ResultStatement(
            job_id=job_id,
            task_id=f"{job_id}-t{i}",
            attempt_id=f"{job_id}-t{i}-a1",
            node_id=signer.node_id,
            outputs=[common_pb2.OutputRef(name=r.name, digest=r.digest, size=r.size) for r in rs],
        ).SerializeToString()
        for i, rs in enumerate(refs)
    ]
    receipts = make_receipts(statements, sign_batch(signer, statements), signer.public_key)
    return [
        TaskResult(
            job_id=job_id,
            task_id=f"{job_id}-t{i}",
            index=i,
            state=TaskState.SUCCEEDED,
            node_id=signer.node_id,
            outputs=refs[i],
            receipt=receipts[i],
            inline_outputs={sha256_hex(data): data for data in outputs[i].values()},
        )
        for i in range(len(outputs))
    ]
