"""Building the protocol messages the worker sends: one place for domain -> proto."""

import platform
from collections.abc import Iterable, Sequence
from importlib import metadata

from sparegrid.v1 import common_pb2, worker_pb2
from sparegrid.wire.codes import DEVICE_KINDS
from sparegrid.worker.executors.registry import ExecutorSpec
from sparegrid.worker.executors.render.blender import cycles_backends
from sparegrid.worker.node.devices import DeviceInfo
from sparegrid.worker.slots.child.protocol import Outcome

_KINDS = DEVICE_KINDS


def package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def software_versions(devices: Sequence[DeviceInfo] = ()) -> dict[str, str]:
    """What this node runs; optional packages are looked up without importing them."""
    versions = {"sparegrid": package_version("sparegrid") or "0+unknown"}
    versions["python"] = platform.python_version()
    torch = package_version("torch")
    if torch:
        versions["torch"] = torch
    blender = package_version("bpy")  # a render job may require its major.minor
    if blender:
        versions["blender"] = blender
        versions |= cycles_backends(blender, [d.kind for d in devices])
    return versions


def device_proto(device: DeviceInfo) -> common_pb2.Device:
    return common_pb2.Device(
        index=device.index,
        kind=_KINDS[device.kind],
        name=device.name,
        uuid=device.uuid,
        memory_bytes=device.memory_bytes,
        compute_capability=device.compute_capability,
        driver_version=device.driver_version,
        backend=device.backend,
    )


def hello(
    public_key: bytes,
    node_name: str,
    devices: Sequence[DeviceInfo],
    executors: Iterable[ExecutorSpec],
    running_attempts: Iterable[str],
    max_attempt_seconds: float = 0.0,
) -> worker_pb2.WorkerMessage:
    return worker_pb2.WorkerMessage(
        hello=worker_pb2.Hello(
            max_attempt_seconds=max_attempt_seconds,
            public_key=public_key,
            node_name=node_name,
            devices=[device_proto(d) for d in devices],
            software=software_versions(devices),
            executors=[worker_pb2.ExecutorInfo(name=e.name, version=e.version) for e in executors],
            running_attempts=sorted(running_attempts),
        )
    )


def statement_bytes(
    assignment: worker_pb2.Assignment,
    node_id: str,
    device: DeviceInfo,
    executor: ExecutorSpec,
    outcome: Outcome,
) -> bytes:
    """Serialises the statement once; these exact bytes are hashed, signed and sent.
    Fields are set one by one: keyword arguments and lists of sub-messages cost about
    twice as much, some microseconds per task."""
    statement = common_pb2.ResultStatement()
    statement.job_id = assignment.job_id
    statement.task_id = assignment.task_id
    statement.attempt_id = assignment.attempt_id
    statement.node_id = node_id
    if assignment.inputs:
        statement.inputs.extend(assignment.inputs)
    add_output = statement.outputs.add
    for o in outcome.outputs:
        add_output(name=o.name, digest=o.digest, size=o.size)
    metrics = statement.metrics
    metrics.duration_us = outcome.duration_us
    metrics.device_index = device.index
    metrics.device_name = device.name
    statement.executor = executor.name
    statement.executor_version = executor.version
    return statement.SerializeToString(deterministic=True)


def message_of(body: worker_pb2.Results | worker_pb2.Failures) -> worker_pb2.WorkerMessage:
    if isinstance(body, worker_pb2.Results):
        return worker_pb2.WorkerMessage(results=body)
    return worker_pb2.WorkerMessage(failures=body)
