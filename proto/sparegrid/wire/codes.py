"""Codes both sides act on, in one place: the stable error codes a refusal carries, the
codes of a failed attempt and of a result's verdict, and the names of the wire enums.

A refusal from the coordinator carries its `ErrorCode` in the trailing metadata
`CODE_METADATA_KEY`; the SDK raises it as `SparegridError.code`. A worker reports a failed
attempt with a `FailureCode`; the coordinator answers each result with a `VerdictCode`.
tests/test_codes.py checks that every code raised in the source is registered here.
"""

from collections.abc import Mapping
from enum import StrEnum
from typing import Final

from sparegrid.v1 import admin_pb2, common_pb2

CODE_METADATA_KEY: Final = "sparegrid-code"


class ErrorCode(StrEnum):
    """The stable code of an error a user can see, and match on."""

    # raised by the coordinator, sent in the `sparegrid-code` trailer
    ACCOUNT_DISABLED = "ACCOUNT_DISABLED"
    ACCOUNT_EXISTS = "ACCOUNT_EXISTS"
    ACCOUNT_NOT_FOUND = "ACCOUNT_NOT_FOUND"
    BAD_AMOUNT = "BAD_AMOUNT"
    BAD_API_KEY = "BAD_API_KEY"
    BAD_ATTEMPTS = "BAD_ATTEMPTS"
    BAD_CREDIT = "BAD_CREDIT"
    BAD_DEVICE = "BAD_DEVICE"
    BAD_DIGEST = "BAD_DIGEST"
    BAD_EVENT_KIND = "BAD_EVENT_KIND"  # an events filter naming no kind or family
    BAD_EXPIRY = "BAD_EXPIRY"
    BAD_HELLO = "BAD_HELLO"
    BAD_IDEMPOTENCY_KEY = "BAD_IDEMPOTENCY_KEY"  # over 200 characters
    BAD_INPUTS = "BAD_INPUTS"
    BAD_MESSAGE = "BAD_MESSAGE"
    BAD_NAME = "BAD_NAME"
    BAD_NOTE = "BAD_NOTE"
    BAD_OFFSET = "BAD_OFFSET"
    BAD_PAGE_TOKEN = "BAD_PAGE_TOKEN"
    BAD_PARAMS = "BAD_PARAMS"
    BAD_POLICY = "BAD_POLICY"
    BAD_PRIORITY = "BAD_PRIORITY"
    BAD_PROMPTS = "BAD_PROMPTS"
    BAD_REGISTRATION = "BAD_REGISTRATION"
    BAD_REQUIREMENTS = "BAD_REQUIREMENTS"
    BAD_SESSION = "BAD_SESSION"
    BAD_STATE = "BAD_STATE"
    BAD_TASK = "BAD_TASK"
    BAD_TOKENIZER = "BAD_TOKENIZER"  # a tokenizer.json that cannot be loaded (its regex panics)
    BAD_UPLOAD = "BAD_UPLOAD"
    BAD_USES = "BAD_USES"
    BAD_WEBHOOK = "BAD_WEBHOOK"
    BATCH_TOO_LARGE = "BATCH_TOO_LARGE"
    BLOB_NOT_FOUND = "BLOB_NOT_FOUND"
    BLOB_STORE_UNAVAILABLE = "BLOB_STORE_UNAVAILABLE"  # the S3 bucket did not answer
    BLOB_TOO_LARGE = "BLOB_TOO_LARGE"
    CREDIT_LIMIT = "CREDIT_LIMIT"  # a grant past the 2^63 - 1 credit the ledger holds in all
    DIGEST_MISMATCH = "DIGEST_MISMATCH"  # also: a download that does not hash to its digest
    DISK_FULL = "DISK_FULL"  # the coordinator's disk, during an upload: nothing of it is kept
    HANDSHAKE_TIMEOUT = "HANDSHAKE_TIMEOUT"  # a worker session's Hello or answer never came
    IDEMPOTENCY_KEY_REUSED = "IDEMPOTENCY_KEY_REUSED"
    INSUFFICIENT_CREDIT = "INSUFFICIENT_CREDIT"
    INTERNAL = "INTERNAL"  # a bug: the message holds a reference id from the log
    INVITE_EXPIRED = "INVITE_EXPIRED"
    INVITE_NOT_FOUND = "INVITE_NOT_FOUND"  # no invitation of that id (revoke)
    INVITE_REVOKED = "INVITE_REVOKED"
    INVITE_UNKNOWN = "INVITE_UNKNOWN"  # a signup's code is no invitation's
    INVITE_USED_UP = "INVITE_USED_UP"
    JOB_FINISHED = "JOB_FINISHED"
    JOB_NOT_FOUND = "JOB_NOT_FOUND"
    JOB_NOT_RETRYABLE = "JOB_NOT_RETRYABLE"
    LAST_ADMIN = "LAST_ADMIN"
    MODEL_MISMATCH = "MODEL_MISMATCH"
    MODEL_NOT_EXPORTED = "MODEL_NOT_EXPORTED"  # also raised by the SDK before upload
    NODE_NOT_FOUND = "NODE_NOT_FOUND"
    NODE_OWNER_CHANGED = "NODE_OWNER_CHANGED"  # a node key proves one owner account for good
    NOTHING_TO_RETRY = "NOTHING_TO_RETRY"
    NOT_ADMIN = "NOT_ADMIN"
    NOT_LEASED = "NOT_LEASED"
    NOT_PENDING = "NOT_PENDING"
    NO_API_KEY = "NO_API_KEY"  # also raised by the SDK before any call
    NO_KEY = "NO_KEY"
    OWNER_REQUIRED = "OWNER_REQUIRED"
    PROMPT_TOO_LONG = "PROMPT_TOO_LONG"
    QUORUM_UNREACHABLE = "QUORUM_UNREACHABLE"
    QUOTA_EXCEEDED = "QUOTA_EXCEEDED"
    REGISTRATION_BUSY = "REGISTRATION_BUSY"
    SIZE_MISMATCH = "SIZE_MISMATCH"
    STAKE_LOCKED = "STAKE_LOCKED"
    STORE_UNAVAILABLE = "STORE_UNAVAILABLE"
    SUBMIT_IN_PROGRESS = "SUBMIT_IN_PROGRESS"
    TOKENIZER_MISMATCH = "TOKENIZER_MISMATCH"
    TOO_MANY_CALLS = "TOO_MANY_CALLS"  # an account calling past its rate: wait (retry-after-ms)
    TOO_MANY_HEARTBEATS = "TOO_MANY_HEARTBEATS"  # a session flooding: it is ended
    TOO_MANY_NEW_NODES = "TOO_MANY_NEW_NODES"  # one address's new keys without an owner key
    TOO_MANY_SESSIONS = "TOO_MANY_SESSIONS"  # one address's sessions without an owner key
    TOO_MANY_SIGNUPS = "TOO_MANY_SIGNUPS"  # from one address: wait (retry-after-ms)
    TOO_MANY_TRANSFERS = "TOO_MANY_TRANSFERS"  # one account's uploads and downloads open at once
    TOO_MANY_WATCHES = "TOO_MANY_WATCHES"  # one account's WatchJob calls open at once
    UNKNOWN_KIND = "UNKNOWN_KIND"
    UNSAFE_MODEL = "UNSAFE_MODEL"
    UNSUPPORTED_MODEL = "UNSUPPORTED_MODEL"
    UPLOAD_CLOSED = "UPLOAD_CLOSED"
    UPLOAD_INCOMPLETE = "UPLOAD_INCOMPLETE"
    UPLOAD_IN_PROGRESS = "UPLOAD_IN_PROGRESS"
    WORKER_TOO_OLD = "WORKER_TOO_OLD"
    # raised by the SDK and the CLI themselves
    BAD_ADDRESS = "BAD_ADDRESS"  # a list of coordinators gRPC cannot take
    BAD_FLAGS = "BAD_FLAGS"
    BAD_FRAMES = "BAD_FRAMES"
    BAD_INPUT = "BAD_INPUT"
    BAD_MODEL = "BAD_MODEL"
    BAD_OUTPUT = "BAD_OUTPUT"
    BAD_RESULT = "BAD_RESULT"
    BAD_TILE = "BAD_TILE"
    BAD_TIMEOUT = "BAD_TIMEOUT"  # job.wait(timeout=-1): no time to wait
    BAD_TLS_CA = "BAD_TLS_CA"
    BLENDER_FAILED = "BLENDER_FAILED"
    EXPORT_FAILED = "EXPORT_FAILED"
    FRAME_NOT_FOUND = "FRAME_NOT_FOUND"  # job preview --frame N of a finished job without it
    FRAME_NOT_READY = "FRAME_NOT_READY"
    KEY_SAVED = "KEY_SAVED"  # signup: a key for that coordinator is saved already
    MISSING_FILES = "MISSING_FILES"
    NEEDS_BLENDER = "NEEDS_BLENDER"
    NOT_A_RENDER = "NOT_A_RENDER"
    NOT_A_GENERATE_JOB = "NOT_A_GENERATE_JOB"  # completions re-attached to another kind
    INPUT_MISMATCH = "INPUT_MISMATCH"  # a model or prompts file other than the job's
    JOB_NOT_FINISHED = "JOB_NOT_FINISHED"  # job results --batch-out of a running job
    NO_ADMIN_KEY = "NO_ADMIN_KEY"
    NO_CLIENT = "NO_CLIENT"
    NO_FRAMES = "NO_FRAMES"  # job preview of a tiled still, or of a job that ended frameless
    NO_TILES = "NO_TILES"
    NOT_A_RESULTS_DIR = "NOT_A_RESULTS_DIR"  # job verify --dir: no results.json there
    OUTPUT_EXISTS = "OUTPUT_EXISTS"
    OUTPUT_NOT_FOUND = "OUTPUT_NOT_FOUND"
    PYARROW_MISSING = "PYARROW_MISSING"
    TASK_FAILED = "TASK_FAILED"
    TORCH_MISSING = "TORCH_MISSING"
    UNKNOWN = "UNKNOWN"  # an error that is not a gRPC status
    UNPACKABLE_FILES = "UNPACKABLE_FILES"
    VERIFICATION_FAILED = "VERIFICATION_FAILED"
    WAIT_TIMEOUT = "WAIT_TIMEOUT"
    WATCH_ENDED = "WATCH_ENDED"


class FailureCode(StrEnum):
    """Why an attempt failed, as a worker reports it (and the coordinator records it)."""

    PREEMPTED = "PREEMPTED"  # the node's own policy stopped it: re-queued, not held against it
    OUT_OF_MEMORY = "CUDA_OOM"  # the executor ran out of device memory: retried elsewhere
    OVER_VRAM_SHARE = "OVER_VRAM_SHARE"  # needs more GPU memory than the node lends
    OUTPUT_REJECTED = "OUTPUT_REJECTED"
    BAD_PARAMS = "BAD_PARAMS"
    BAD_INPUT = "BAD_INPUT"
    EXECUTOR_ERROR = "EXECUTOR_ERROR"
    EXECUTOR_CRASHED = "EXECUTOR_CRASHED"
    TIMEOUT = "TIMEOUT"
    UNKNOWN_KIND = "UNKNOWN_KIND"
    UNKNOWN_DEVICE = "UNKNOWN_DEVICE"
    INPUT_UNAVAILABLE = "INPUT_UNAVAILABLE"
    INPUT_DIGEST_MISMATCH = "INPUT_DIGEST_MISMATCH"
    NO_CUDA = "NO_CUDA"
    NODE_LOST = "NODE_LOST"  # set by the coordinator: lost with its node, given back


class VerdictCode(StrEnum):
    """The coordinator's word on one result statement of a batch ("" when accepted)."""

    DUPLICATE = "DUPLICATE"  # accepted before (earns nothing again) or twice in one batch
    LOG_TOO_LARGE = "LOG_TOO_LARGE"  # a task log over MAX_LOG_BYTES
    BAD_BATCH = "BAD_BATCH"
    BAD_LOG = "BAD_LOG"  # a task log whose signature, statement or digest does not check out
    BAD_SIGNATURE = "BAD_SIGNATURE"
    BAD_STATEMENT = "BAD_STATEMENT"
    BAD_OUTPUT = "BAD_OUTPUT"
    # inline outputs over MAX_INLINE_OUTPUT each or MAX_INLINE_RESULT in all: an honest
    # worker uploads them instead, so the node is struck
    INLINE_TOO_LARGE = "INLINE_TOO_LARGE"
    NOT_LEASED = "NOT_LEASED"
    OUTPUT_NOT_UPLOADED = "OUTPUT_NOT_UPLOADED"
    # inline outputs that would put the node's owner (or the anonymous nodes together) over
    # the stored quota, which they count against as uploads do: refused, not struck
    QUOTA_EXCEEDED = "QUOTA_EXCEEDED"
    STALE = "STALE"
    TASK_DONE = "TASK_DONE"


# --- the names of the wire enums (both sides' own enums use these values) ----------------


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class TaskState(StrEnum):
    QUEUED = "queued"
    LEASED = "leased"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class WebhookState(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


class Standing(StrEnum):
    ACTIVE = "active"
    QUARANTINED = "quarantined"
    BANNED = "banned"
    PENDING = "pending"


class NodeState(StrEnum):
    ONLINE = "online"
    OFFLINE = "offline"
    DRAINING = "draining"


class DeviceKind(StrEnum):
    CPU = "cpu"
    CUDA = "cuda"


JOB_STATES: Final[Mapping[str, common_pb2.JobState.ValueType]] = {
    JobState.QUEUED: common_pb2.JOB_STATE_QUEUED,
    JobState.RUNNING: common_pb2.JOB_STATE_RUNNING,
    JobState.SUCCEEDED: common_pb2.JOB_STATE_SUCCEEDED,
    JobState.FAILED: common_pb2.JOB_STATE_FAILED,
    JobState.CANCELLED: common_pb2.JOB_STATE_CANCELLED,
}
WEBHOOK_STATES: Final[Mapping[str, common_pb2.WebhookState.ValueType]] = {
    WebhookState.PENDING: common_pb2.WEBHOOK_STATE_PENDING,
    WebhookState.DELIVERED: common_pb2.WEBHOOK_STATE_DELIVERED,
    WebhookState.FAILED: common_pb2.WEBHOOK_STATE_FAILED,
}
TASK_STATES: Final[Mapping[str, common_pb2.TaskState.ValueType]] = {
    TaskState.QUEUED: common_pb2.TASK_STATE_QUEUED,
    TaskState.LEASED: common_pb2.TASK_STATE_LEASED,
    TaskState.SUCCEEDED: common_pb2.TASK_STATE_SUCCEEDED,
    TaskState.FAILED: common_pb2.TASK_STATE_FAILED,
    TaskState.CANCELLED: common_pb2.TASK_STATE_CANCELLED,
}
STANDINGS: Final[Mapping[str, admin_pb2.NodeStanding.ValueType]] = {
    Standing.ACTIVE: admin_pb2.NODE_STANDING_ACTIVE,
    Standing.QUARANTINED: admin_pb2.NODE_STANDING_QUARANTINED,
    Standing.BANNED: admin_pb2.NODE_STANDING_BANNED,
    Standing.PENDING: admin_pb2.NODE_STANDING_PENDING,
}
NODE_STATES: Final[Mapping[str, admin_pb2.NodeState.ValueType]] = {
    NodeState.ONLINE: admin_pb2.NODE_STATE_ONLINE,
    NodeState.OFFLINE: admin_pb2.NODE_STATE_OFFLINE,
    NodeState.DRAINING: admin_pb2.NODE_STATE_DRAINING,
}
# DEVICE_KIND_UNSPECIFIED is "any kind" in requirements and is not a device's kind
DEVICE_KINDS: Final[Mapping[str, common_pb2.DeviceKind.ValueType]] = {
    DeviceKind.CPU: common_pb2.DEVICE_KIND_CPU,
    DeviceKind.CUDA: common_pb2.DEVICE_KIND_CUDA,
}


def names(table: Mapping[str, int]) -> dict[int, str]:
    """A table the other way round: wire value -> name."""
    return {value: name for name, value in table.items()}
