"""The coordinator's one error type: a stable code, a kind and a message for the user.

Domain code raises these; `rpc/errors.py` is the one place that maps kinds to gRPC status
codes.
"""

from enum import StrEnum


class ErrorKind(StrEnum):
    INVALID = "invalid"  # INVALID_ARGUMENT
    NOT_FOUND = "not_found"  # NOT_FOUND
    UNAUTHENTICATED = "unauthenticated"  # UNAUTHENTICATED
    PERMISSION = "permission"  # PERMISSION_DENIED
    PRECONDITION = "precondition"  # FAILED_PRECONDITION
    EXHAUSTED = "exhausted"  # RESOURCE_EXHAUSTED
    EXISTS = "exists"  # ALREADY_EXISTS
    ABORTED = "aborted"  # ABORTED: retry later
    UNAVAILABLE = "unavailable"  # UNAVAILABLE: busy or the database is lost; retry later


class CoordinatorError(Exception):
    def __init__(self, kind: ErrorKind, code: str, message: str, retry_after: float = 0.0) -> None:
        super().__init__(message)
        self.kind = kind
        self.code = code
        self.message = message
        self.retry_after = retry_after  # seconds; sent as `retry-after-ms` when set


def invalid(code: str, message: str) -> CoordinatorError:
    return CoordinatorError(ErrorKind.INVALID, code, message)


def not_found(code: str, message: str) -> CoordinatorError:
    return CoordinatorError(ErrorKind.NOT_FOUND, code, message)


def store_unavailable(exc: Exception) -> CoordinatorError:
    """The database is lost: the call did nothing, and may be retried once it is back."""
    return CoordinatorError(
        ErrorKind.UNAVAILABLE,
        "STORE_UNAVAILABLE",
        f"the coordinator lost its database ({exc}); it reconnects by itself: retry shortly",
    )
