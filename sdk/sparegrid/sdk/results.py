"""A task's result: its outputs, and the signed receipt that proves which node made them."""

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from sparegrid.sdk.errors import NotFoundError, SparegridError, VerificationError
from sparegrid.sdk.models import OutputRef, TaskState, VerificationFailure, VerifyReport
from sparegrid.v1 import common_pb2
from sparegrid.wire import BadSignature, sha256_hex
from sparegrid.wire.receipt import verify_countersignature, verify_receipt

Fetch = Callable[[OutputRef], bytes]
AsyncFetch = Callable[[OutputRef], Awaitable[bytes]]


@dataclass(frozen=True)
class TaskResult:
    """One task of a job. `outputs` name blobs by digest; `receipt` is the node's proof."""

    job_id: str
    task_id: str
    index: int
    state: TaskState
    node_id: str
    outputs: list[OutputRef]
    receipt: common_pb2.Receipt | None
    error: str = ""
    inline_outputs: dict[str, bytes] = field(default_factory=dict, repr=False)
    fetch: Fetch | None = field(default=None, repr=False, compare=False)
    afetch: AsyncFetch | None = field(default=None, repr=False, compare=False)

    @property
    def label(self) -> str:
        return f"task {self.index} ({self.task_id})"

    def output_ref(self, name: str) -> OutputRef:
        for ref in self.outputs:
            if ref.name == name:
                return ref
        names = ", ".join(ref.name for ref in self.outputs) or "none"
        raise NotFoundError("OUTPUT_NOT_FOUND", f"{self.label} has no output {name!r} ({names})")

    def _inline(self, ref: OutputRef) -> bytes | None:
        data = self.inline_outputs.get(ref.digest)
        if data is not None:
            check_blob(ref, data)
        return data

    def output(self, name: str) -> bytes:
        """The bytes of an output: inline, or downloaded through the client; digest-checked."""
        ref = self.output_ref(name)
        data = self._inline(ref)
        if data is not None:
            return data
        if self.fetch is None:
            raise SparegridError(
                "NO_CLIENT", f"{self.label}: output {name!r} must be downloaded; use output_async"
            )
        return check_blob(ref, self.fetch(ref))

    async def output_async(self, name: str) -> bytes:
        """Like `output`, downloading through an AsyncClient."""
        ref = self.output_ref(name)
        data = self._inline(ref)
        if data is not None:
            return data
        if self.afetch is None:
            return self.output(name)
        return check_blob(ref, await self.afetch(ref))

    def verify(self, public_key: bytes | None = None, coordinator_key: bytes | None = None) -> None:
        """Checks the receipt proves this result; raises VerificationError saying what failed.

        The Merkle path and the node's Ed25519 signature must hold, the statement must name
        this job, task and node, and every output must have the digest and size it states.
        With `public_key`, the receipt must also be signed by exactly that key. With
        `coordinator_key`, the coordinator's countersignature must hold too, over a
        validation of this very statement (`Client.coordinator_key()` gives the key).
        """
        if self.receipt is None:
            raise VerificationError(f"{self.label} has no receipt")
        if public_key is not None and self.receipt.public_key != public_key:
            raise VerificationError(f"{self.label}: receipt is signed by another public key")
        try:
            verified = verify_receipt(self.receipt)
        except BadSignature as exc:
            raise VerificationError(f"{self.label}: {exc}") from exc
        statement = verified.statement
        self._check_ids(statement, verified.node_id)
        self._check_outputs(statement.outputs)
        if coordinator_key is not None:
            self.validation(coordinator_key)

    def validation(self, coordinator_key: bytes) -> common_pb2.Validation:
        """The coordinator's countersigned word on this result, checked against its key:
        how it was validated (`method`, `detail`), which nodes agreed, what it earned."""
        if self.receipt is None:
            raise VerificationError(f"{self.label} has no receipt")
        try:
            validation = verify_countersignature(self.receipt, coordinator_key)
        except BadSignature as exc:
            raise VerificationError(f"{self.label}: {exc}") from exc
        if (validation.job_id, validation.task_id) != (self.job_id, self.task_id):
            raise VerificationError(
                f"{self.label}: countersignature is for task {validation.task_id!r} "
                f"of job {validation.job_id!r}"
            )
        if validation.node_id != self.node_id:
            raise VerificationError(
                f"{self.label}: countersignature names node {validation.node_id!r}"
            )
        return validation

    def _check_ids(self, statement: common_pb2.ResultStatement, signer: str) -> None:
        expected = {"job": self.job_id, "task": self.task_id, "node": self.node_id}
        stated = {"job": statement.job_id, "task": statement.task_id, "node": signer}
        for what, want in expected.items():
            if stated[what] != want:
                raise VerificationError(
                    f"{self.label}: receipt is for {what} {stated[what]!r}, not {want!r}"
                )

    def _check_outputs(self, stated: Iterable[common_pb2.OutputRef]) -> None:
        signed = {ref.name: (ref.digest, ref.size) for ref in stated}
        reported = {ref.name: (ref.digest, ref.size) for ref in self.outputs}
        for name in sorted(signed.keys() | reported.keys()):
            if name not in signed:
                raise VerificationError(f"{self.label}: output {name!r} is not in the receipt")
            if name not in reported:
                raise VerificationError(f"{self.label}: receipt names output {name!r} not returned")
            if signed[name] != reported[name]:
                raise VerificationError(
                    f"{self.label}: output {name!r} is {_ref_text(reported[name])} "
                    f"but the receipt states {_ref_text(signed[name])}"
                )


def _ref_text(ref: tuple[str, int]) -> str:
    return f"{ref[0][:16]}… ({ref[1]} bytes)"


def check_blob(ref: OutputRef, data: bytes) -> bytes:
    """`data` if it has the digest and size `ref` names, else VerificationError."""
    digest = sha256_hex(data)
    if digest != ref.digest or len(data) != ref.size:
        raise VerificationError(
            f"output {ref.name!r}: got {digest[:16]}… ({len(data)} bytes), "
            f"expected {ref.digest[:16]}… ({ref.size} bytes)",
            code="DIGEST_MISMATCH",
        )
    return data


def verify_all(
    results: Iterable[TaskResult],
    public_key: bytes | None = None,
    coordinator_key: bytes | None = None,
) -> VerifyReport:
    """Checks every succeeded task's receipt (and countersignature, given the coordinator's
    key); collects failures instead of raising."""
    ok, skipped = 0, 0
    failures: list[VerificationFailure] = []
    for result in results:
        if result.state != TaskState.SUCCEEDED:
            skipped += 1
            continue
        try:
            result.verify(public_key, coordinator_key)
        except VerificationError as exc:
            failures.append(VerificationFailure(result.index, result.task_id, exc.message))
        else:
            ok += 1
    return VerifyReport(ok=ok, failures=failures, skipped=skipped)
