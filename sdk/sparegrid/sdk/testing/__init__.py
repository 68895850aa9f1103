"""Fakes for tests of code built on the SDK (and of the SDK itself).

fake = FakeCoordinator()
server, address = await serve_fake(fake)
key = fake.add_account("alice", credit=100)
async with AsyncClient(address, key) as client: ...
"""

from grpc import aio

from sparegrid.sdk.testing.admin import FakeAdminService
from sparegrid.sdk.testing.blobs import InMemoryBlobService, serve_blobs
from sparegrid.sdk.testing.coordinator import FakeCoordinator
from sparegrid.sdk.testing.receipts import signed_results
from sparegrid.v1 import admin_pb2_grpc, blob_pb2_grpc, client_pb2_grpc

__all__ = [
    "FakeAdminService",
    "FakeCoordinator",
    "InMemoryBlobService",
    "serve_blobs",
    "serve_fake",
    "signed_results",
]


async def serve_fake(fake: FakeCoordinator) -> tuple[aio.Server, str]:
    """Serves ClientService, AdminService and BlobService of `fake` on 127.0.0.1:<free>."""
    server = aio.server()
    client_pb2_grpc.add_ClientServiceServicer_to_server(fake, server)
    admin_pb2_grpc.add_AdminServiceServicer_to_server(FakeAdminService(fake), server)
    blob_pb2_grpc.add_BlobServiceServicer_to_server(fake.blobs, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"
