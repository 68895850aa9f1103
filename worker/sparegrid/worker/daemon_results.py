"""The worker daemon's results: each attempt's outcome (a preemption's too) signed into the
outbox, and the outbox's batches sent once per session, their large outputs uploaded
first; and the inputs of attempts, downloaded through the session."""

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence

from sparegrid.v1 import common_pb2, worker_pb2
from sparegrid.wire import Signer
from sparegrid.wire.receipt import MAX_INLINE_RESULT, decode_statement
from sparegrid.wire.tasklog import SUCCEEDED, sign_log
from sparegrid.worker.daemon_flow import PREEMPTED, WorkerFlow
from sparegrid.worker.errors import BlobRejected, BlobUnavailable
from sparegrid.worker.executors.registry import ExecutorRegistry
from sparegrid.worker.metrics import WorkerMetrics
from sparegrid.worker.node.devices import DeviceInfo
from sparegrid.worker.policy import Decision
from sparegrid.worker.slots.child.protocol import Outcome, OutputData
from sparegrid.worker.upstream.batcher import ResultBatcher
from sparegrid.worker.upstream.messages import statement_bytes
from sparegrid.worker.upstream.outbox import Outbox, OutboxEntry, output_attempts
from sparegrid.worker.upstream.ratelimit import RateLimiter, throttle
from sparegrid.worker.upstream.session import Session

_log = logging.getLogger("sparegrid.worker")
OUTPUT_REJECTED = "OUTPUT_REJECTED"


class WorkerResults(WorkerFlow):
    """The Worker's outcomes and their delivery; the Worker holds the state named here."""

    signer: Signer
    executors: ExecutorRegistry
    metrics: WorkerMetrics
    _batcher: ResultBatcher
    _outbox: Outbox
    _since: dict[str, float]
    _connected: asyncio.Event
    _download_limit: RateLimiter | None

    @property
    def node_id(self) -> str:
        return self.signer.node_id

    def _report(
        self, assignment: worker_pb2.Assignment, device: DeviceInfo | None, outcome: Outcome
    ) -> None:
        spec = self.executors.get(assignment.kind)
        since = self._since.pop(assignment.attempt_id, None)
        self.metrics.report(assignment.kind, device.index if device else None, outcome)
        if outcome.ok and device is not None:
            self._durations[device.index].append(outcome.duration_us / 1e6)
            self._timed(device.index, since)
        if not outcome.ok or device is None or spec is None:
            failure = worker_pb2.TaskFailure(
                attempt_id=assignment.attempt_id,
                code=outcome.code,
                message=outcome.message,
                retryable=outcome.retryable,
            )
            if outcome.log is not None:
                failure.log.CopyFrom(self._log_of(assignment, outcome.code, outcome.log))
            _log.info(
                "attempt %s failed: %s %s", assignment.attempt_id, outcome.code, outcome.message
            )
            self._batcher.add_failure(failure)
            return
        statement = statement_bytes(assignment, self.node_id, device, spec, outcome)
        inline, blobs = split_inline(outcome.outputs, self.config.inline_limit)
        log = None
        if assignment.keep_logs and outcome.log is not None:
            log = self._log_of(assignment, SUCCEEDED, outcome.log)
        self._batcher.add_result(statement, inline, blobs, log)

    def _log_of(
        self, assignment: worker_pb2.Assignment, outcome: str, text: bytes
    ) -> common_pb2.TaskLog:
        """The attempt's log (redacted by its runner), signed by this node."""
        a = assignment
        return sign_log(self.signer, a.job_id, a.task_id, a.attempt_id, outcome, text)

    async def _send_outbox(self, session: Session) -> None:
        """Sends every pending batch once per session, oldest first, as they appear."""
        sent: set[int] = set()
        while True:
            changed = self._outbox.change_event()
            for entry in self._outbox.pending():
                if entry.batch_id in sent:
                    continue
                sent.add(entry.batch_id)
                if await self._upload(session, entry):
                    session.post(entry.message)
            await changed.wait()

    async def _upload(self, session: Session, entry: OutboxEntry) -> bool:
        """Uploads the batch's large outputs; False if the coordinator refused one."""
        if not entry.blobs:  # every output inline: no statement need be decoded again
            return True
        try:
            for digest, attempt_ids in output_attempts(entry.message).items():
                await session.blobs.upload(digest, self._outbox.blob_path(digest), attempt_ids)
        except BlobRejected as exc:
            self._give_up(entry, str(exc))
            return False
        return True

    def _give_up(self, entry: OutboxEntry, reason: str) -> None:
        """A batch that can never be delivered becomes failures for its attempts."""
        _log.error(
            "batch %d cannot be delivered (%s); reporting its tasks failed", entry.batch_id, reason
        )
        for data in entry.message.results.statements:
            attempt_id = decode_statement(data).attempt_id
            message = f"the coordinator refused an output upload: {reason}"
            self._batcher.add_failure(
                worker_pb2.TaskFailure(
                    attempt_id=attempt_id, code=OUTPUT_REJECTED, message=message, retryable=True
                )
            )
        self._outbox.ack(entry.batch_id)

    async def _fetch(self, digest: str, offset: int) -> AsyncIterator[bytes]:
        """Input bytes from the coordinator, waiting for a session if there is none."""
        await self._connected.wait()
        session = self._session
        if session is None:
            raise BlobUnavailable("the session ended before the download started")
        async for chunk in session.blobs.download(digest, offset):
            await throttle(self._download_limit, len(chunk))
            yield chunk

    def _preempted(self, assignment: worker_pb2.Assignment, decision: Decision) -> None:
        reason = decision.mode.value + (f": {decision.reason}" if decision.reason else "")
        outcome = Outcome(0, code=PREEMPTED, message=reason, retryable=True)
        self._report(assignment, None, outcome)


def split_inline(
    outputs: Sequence[OutputData], limit: int
) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """The outputs sent inline with their result (each at most `limit` bytes, all at most
    MAX_INLINE_RESULT: the coordinator refuses, and strikes, more), and those uploaded."""
    inline: dict[str, bytes] = {}
    blobs: dict[str, bytes] = {}
    carried = 0
    for o in outputs:
        if o.digest in inline or o.digest in blobs:
            continue
        if o.size <= limit and carried + o.size <= MAX_INLINE_RESULT:
            inline[o.digest] = o.data
            carried += o.size
        else:
            blobs[o.digest] = o.data
    return inline, blobs
