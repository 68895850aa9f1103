"""The bookkeeping of following a job over WatchJob, shared by both clients.

The stream pushes the job each time it changes and ends once the job is final. When the
connection drops (UNAVAILABLE) or the stream ends early, the watcher reconnects with
backoff; the first message of a new stream is the job's current state, so nothing is lost.
"""

import math
import time

import grpc

from sparegrid.sdk.errors import (
    DeadlineExceededError,
    InvalidArgumentError,
    UnavailableError,
    from_rpc_error,
)
from sparegrid.sdk.models import JobSnapshot
from sparegrid.sdk.retry import Attempts, RetryPolicy
from sparegrid.v1 import client_pb2


class WatchState:
    def __init__(self, job_id: str, policy: RetryPolicy, timeout: float | None) -> None:
        if timeout is not None and not 0 <= timeout < math.inf:  # nan too
            raise InvalidArgumentError(
                "BAD_TIMEOUT",
                f"timeout must be 0 or more seconds (None waits without a limit), got {timeout}",
            )
        self.job_id = job_id
        self.timeout = timeout
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.attempts = Attempts(policy, idempotent=True)
        self.request = client_pb2.WatchJobRequest(job_id=job_id)

    def _timed_out(self) -> DeadlineExceededError:
        return DeadlineExceededError(
            "WAIT_TIMEOUT",
            f"job {self.job_id} did not finish within {self.timeout:g}s",
            grpc.StatusCode.DEADLINE_EXCEEDED,
        )

    def remaining(self) -> float | None:
        """Seconds left for the next stream, None without a timeout; raises once expired."""
        if self.deadline is None:
            return None
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise self._timed_out()
        return left

    def received(self, snapshot: JobSnapshot) -> bool:
        """Records a good message; True when the job is final and watching is over."""
        self.attempts.succeeded()
        return snapshot.finished

    def failed(self, exc: grpc.RpcError) -> float:
        """Delay before reconnecting; raises the error unless it is worth reconnecting."""
        err = from_rpc_error(exc)
        expired = self.deadline is not None and time.monotonic() >= self.deadline
        if err.status == grpc.StatusCode.DEADLINE_EXCEEDED and expired:
            raise self._timed_out() from None
        if err.status not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            raise err
        return self.attempts.failed(err)

    def ended_early(self) -> float:
        """The stream closed before the job was final: reconnect after a delay."""
        err = UnavailableError(
            "WATCH_ENDED",
            f"the coordinator closed the watch of job {self.job_id} before it finished",
            grpc.StatusCode.UNAVAILABLE,
        )
        return self.attempts.failed(err)
