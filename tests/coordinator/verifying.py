"""Replicated echo jobs on the in-memory coordinator: submit, run on a fake node, read its credit."""

from sparegrid.coordinator.app import App
from sparegrid.coordinator.domain import (
    node_account,
)
from sparegrid.coordinator.services.jobs import JobSpec
from sparegrid.coordinator.services.reputation import TrustConfig
from tests.coordinator.helpers import FakeNode, make_client

ALWAYS_CHECK = TrustConfig(warmup=10**9)


def nodes(app: App, *owners: str) -> list[FakeNode]:
    fleet = [FakeNode(app, f"n{i}", owner=owner) for i, owner in enumerate(owners)]
    for node in fleet:
        node.connect(credit=0)
    return fleet


def submit(app: App, tasks: int, replicas: int = 0, quorum: int = 0) -> str:
    account = app.store.get_account_by_name("alice") or make_client(app)
    params = f'{{"tasks": {tasks}, "data": "hi"}}'.encode()
    spec = JobSpec(kind="echo", params=params, replicas=replicas, quorum=quorum)
    return app.jobs.submit(account, spec).id


def run(node: FakeNode, output: bytes = b"ok", credit: int = 10) -> int:
    """Grants credit, runs whatever the node is given, returns how many it ran."""
    node.app.scheduler.grant(node.id, 0, credit)
    node.app.scheduler.dispatch()
    items = node.sink.take()
    if items:
        assert all(v.accepted for v in node.answer(items, output))
    return len(items)


def credit_of(app: App, node: FakeNode) -> int:
    return app.store.balance(node_account(node.id))


def upload(app: App, account_id: str, data: bytes) -> str:
    from sparegrid.wire import sha256_hex

    digest = sha256_hex(data)
    path = app.blobs.path(digest)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    app.store.add_blob_owners([digest], account_id)
    return digest
