"""The gRPC server: the four services, health checking and reflection, TLS if given."""

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import grpc
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from sparegrid.coordinator.app import App
from sparegrid.coordinator.rpc.admin import AdminServicer
from sparegrid.coordinator.rpc.blob import BlobServicer
from sparegrid.coordinator.rpc.client import ClientServicer
from sparegrid.coordinator.rpc.worker import WorkerServicer
from sparegrid.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    blob_pb2,
    blob_pb2_grpc,
    client_pb2,
    client_pb2_grpc,
    worker_pb2,
    worker_pb2_grpc,
)

log = logging.getLogger("sparegrid.coordinator")

MAX_MESSAGE = 64 << 20
MAX_PENDING_CALLS = 20_000
SERVICES = [
    client_pb2.DESCRIPTOR.services_by_name["ClientService"].full_name,
    admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
    blob_pb2.DESCRIPTOR.services_by_name["BlobService"].full_name,
    worker_pb2.DESCRIPTOR.services_by_name["WorkerService"].full_name,
]


def sparegrid_version() -> str:
    try:
        return version("sparegrid")
    except PackageNotFoundError:
        return "0+unknown"


@dataclass
class Tls:
    cert: Path
    key: Path


def _health_follows(servicer: health.aio.HealthServicer) -> Callable[[bool], None]:
    """Health says NOT_SERVING while the coordinator has lost its database."""
    pending: set[asyncio.Task[None]] = set()

    def changed(serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING
        if not serving:
            status = health_pb2.HealthCheckResponse.NOT_SERVING
        for name in [*SERVICES, ""]:
            task = asyncio.get_running_loop().create_task(servicer.set(name, status))
            pending.add(task)
            task.add_done_callback(pending.discard)

    return changed


async def build_server(app: App, listen: str, tls: Tls | None = None) -> tuple[aio.Server, int]:
    """A server with every service added, bound to `listen`; returns it and its port."""
    server = aio.server(
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE),
            ("grpc.max_send_message_length", MAX_MESSAGE),
            ("grpc.keepalive_time_ms", 30_000),
            # workers ping every 11 s to find a silent link (upstream/session.py)
            ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
            ("grpc.keepalive_permit_without_calls", 1),
            # a second coordinator on a taken address must fail, not share the port
            ("grpc.so_reuseport", 0),
            # Calls that arrived but the event loop has not taken up yet: past the default
            # (1,000, up to 3,000) gRPC kills them at random, which a worker sees as
            # CANCELLED, or as "INTERNAL: Internal error from Core" when it was writing its
            # Hello, and nothing is logged. A registration storm queues here instead, and
            # is answered at once by admission control (services/admission.py).
            ("grpc.server.max_pending_requests", MAX_PENDING_CALLS),
            ("grpc.server.max_pending_requests_hard_limit", 2 * MAX_PENDING_CALLS),
        ]
    )
    client_pb2_grpc.add_ClientServiceServicer_to_server(
        ClientServicer(app, sparegrid_version()), server
    )
    admin_pb2_grpc.add_AdminServiceServicer_to_server(AdminServicer(app), server)
    blob_pb2_grpc.add_BlobServiceServicer_to_server(BlobServicer(app), server)
    worker_pb2_grpc.add_WorkerServiceServicer_to_server(WorkerServicer(app), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in [*SERVICES, ""]:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    app.serving_changed.append(_health_follows(health_servicer))
    reflection.enable_server_reflection(
        [
            *SERVICES,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ],
        server,
    )
    try:
        if tls is None:
            port = server.add_insecure_port(listen)
        else:
            creds = grpc.ssl_server_credentials([(tls.key.read_bytes(), tls.cert.read_bytes())])
            port = server.add_secure_port(listen, creds)
    except RuntimeError:
        port = 0
    if port == 0:
        raise OSError(
            f"cannot listen on {listen}: the address is in use (another coordinator?) "
            "or not on this machine; pick another with --listen"
        )
    return server, port
