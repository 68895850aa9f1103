"""Metadata keys the coordinator sends and its callers act on."""

from collections.abc import Iterable
from typing import Any

# trailing metadata on UNAVAILABLE: milliseconds after which the call may be tried again
# (a registration refused during a storm); a caller waits that long, with jitter, first
RETRY_AFTER_KEY = "retry-after-ms"


def retry_after_seconds(trailers: Iterable[tuple[str, Any]] | None) -> float | None:
    """The retry hint in a call's trailing metadata, in seconds, if it has a valid one."""
    for key, value in trailers or ():
        if key == RETRY_AFTER_KEY:
            try:
                return max(0.0, float(value) / 1000)
            except (TypeError, ValueError):
                return None
    return None
