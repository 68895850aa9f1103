"""The asyncio clients, on grpc.aio: `AsyncClient`, `AsyncAdminClient` and `signup`.

The same API as the sync clients with awaitable methods; both are written once, in
`sparegrid.sdk._async`, and the sync flavour is generated from it.
"""

from sparegrid.sdk._async.admin import AsyncAdminClient, signup
from sparegrid.sdk._async.client import AsyncClient

__all__ = ["AsyncAdminClient", "AsyncClient", "signup"]
