"""The Sparegrid client SDK: submit jobs, follow them, fetch and verify their results.

from sparegrid.sdk import Client

with Client() as client:  # SPAREGRID_COORDINATOR, SPAREGRID_API_KEY
    job = client.checksum("data.bin", tasks=8).wait()
    report = job.verify()
"""

from sparegrid.sdk.aio import AsyncAdminClient, AsyncClient
from sparegrid.sdk.blobs import DEFAULT_CHUNK_SIZE
from sparegrid.sdk.client import AdminClient, Client
from sparegrid.sdk.config import Connection
from sparegrid.sdk.errors import (
    AbortedError,
    AlreadyExistsError,
    AuthenticationError,
    CancelledError,
    DeadlineExceededError,
    FailedPreconditionError,
    InternalError,
    InvalidArgumentError,
    JobFailedError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    SparegridError,
    UnavailableError,
    UnimplementedError,
    VerificationError,
)
from sparegrid.sdk.job import AsyncJob, Job
from sparegrid.sdk.models import (
    Account,
    Device,
    DeviceKind,
    Dispute,
    Estimate,
    Info,
    JobCounts,
    JobSnapshot,
    JobState,
    KindInfo,
    LedgerCheck,
    LedgerEntry,
    Node,
    OutputRef,
    Requirements,
    TaskState,
    VerificationFailure,
    VerifyReport,
)
from sparegrid.sdk.results import TaskResult
from sparegrid.sdk.retry import RetryPolicy

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "AbortedError",
    "Account",
    "AdminClient",
    "AlreadyExistsError",
    "AsyncAdminClient",
    "AsyncClient",
    "AsyncJob",
    "AuthenticationError",
    "CancelledError",
    "Client",
    "Connection",
    "DeadlineExceededError",
    "Device",
    "DeviceKind",
    "Dispute",
    "Estimate",
    "FailedPreconditionError",
    "Info",
    "InternalError",
    "InvalidArgumentError",
    "Job",
    "JobCounts",
    "JobFailedError",
    "JobSnapshot",
    "JobState",
    "KindInfo",
    "LedgerCheck",
    "LedgerEntry",
    "Node",
    "NodeCredit",
    "NotFoundError",
    "OutputRef",
    "PermissionDeniedError",
    "Requirements",
    "ResourceExhaustedError",
    "RetryPolicy",
    "SparegridError",
    "TaskResult",
    "TaskState",
    "UnavailableError",
    "UnimplementedError",
    "VerificationError",
    "VerificationFailure",
    "VerifyReport",
]
