"""The synchronous clients, on grpc's sync API: `Client` for jobs and blobs, `AdminClient`.

Generated from the asyncio clients (`sparegrid.sdk._async.client`) by scripts/unasync.
"""

from sparegrid.sdk._sync.client import DEFAULT_TIMEOUT, AdminClient, Client
from sparegrid.sdk.config import PathLike

__all__ = ["DEFAULT_TIMEOUT", "AdminClient", "Client", "PathLike"]
