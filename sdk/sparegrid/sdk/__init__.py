"""The Sparegrid client SDK: submit jobs, follow them, fetch and verify their results.

from sparegrid.sdk import Client

with Client() as client:  # SPAREGRID_COORDINATOR, SPAREGRID_API_KEY
    job = client.checksum("data.bin", tasks=8).wait()
    report = job.verify()
"""

from sparegrid.sdk._async.admin import AsyncAdminClient
from sparegrid.sdk._async.client import AsyncClient
from sparegrid.sdk._async.inference import AsyncInferenceJob
from sparegrid.sdk._async.job import AsyncJob
from sparegrid.sdk._sync.admin import signup
from sparegrid.sdk._sync.inference import InferenceJob
from sparegrid.sdk._sync.job import Job
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
from sparegrid.sdk.models import (
    Account,
    AttemptLog,
    Device,
    DeviceKind,
    Dispute,
    Estimate,
    Event,
    Info,
    Invite,
    JobCounts,
    JobSnapshot,
    JobState,
    KindInfo,
    LedgerCheck,
    LedgerEntry,
    Node,
    NodeCredit,
    OutputRef,
    Requirements,
    TaskState,
    VerificationFailure,
    VerifyReport,
    WebhookDelivery,
    WebhookState,
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
    "AsyncInferenceJob",
    "AsyncJob",
    "AttemptLog",
    "AuthenticationError",
    "CancelledError",
    "Client",
    "Connection",
    "DeadlineExceededError",
    "Device",
    "DeviceKind",
    "Dispute",
    "Estimate",
    "Event",
    "FailedPreconditionError",
    "InferenceJob",
    "Info",
    "InternalError",
    "InvalidArgumentError",
    "Invite",
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
    "WebhookDelivery",
    "WebhookState",
    "signup",
]
