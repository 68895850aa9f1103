"""A coordinator app connected to a queue sink, for tests of group commits."""

from sparegrid.coordinator.app import App
from sparegrid.coordinator.domain import Device, Node
from sparegrid.coordinator.rpc.worker import QueueSink
from sparegrid.wire import Signer


def connected(app: App) -> QueueSink:
    signer = Signer.generate()
    node = Node(
        signer.node_id,
        signer.public_key,
        "n1",
        [Device(0, "cpu", "cpu", memory_bytes=1 << 30)],
        executors={"echo": "1"},
        owner="volunteer",
    )
    sink = QueueSink(app.unflushed)
    app.sinks.add(sink)
    app.store.upsert_node(node)
    app.scheduler.connect(node, sink, [])
    app.scheduler.grant(node.id, 0, 10)
    return sink
