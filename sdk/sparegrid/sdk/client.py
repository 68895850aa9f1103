"""The synchronous clients, on grpc's sync API: `Client` for jobs and blobs, `AdminClient`.

Generated from the asyncio clients (`sparegrid.sdk._async.client`) by scripts/unasync,
generation jobs (`Client.generate`, `generate_estimate`, `generate_attach`) included.
"""

from sparegrid.sdk._sync.admin import AdminClient
from sparegrid.sdk._sync.client import DEFAULT_TIMEOUT, Client
from sparegrid.sdk.config import PathLike

__all__ = ["DEFAULT_TIMEOUT", "AdminClient", "Client", "PathLike"]
