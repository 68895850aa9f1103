"""A job as its client submitted it, and what differs between two submits of one
idempotency key (a key names one job: an identical retry gets it back, another spec is
refused)."""

from dataclasses import asdict, dataclass, field

from sparegrid.coordinator.domain import Job, Requirements
from sparegrid.coordinator.errors import CoordinatorError
from sparegrid.coordinator.kinds import decode_params


@dataclass
class JobSpec:
    kind: str
    name: str = ""
    params: bytes = b""
    inputs: dict[str, str] = field(default_factory=dict)
    requirements: Requirements = field(default_factory=Requirements)
    max_attempts: int = 0
    idempotency_key: str = ""
    replicas: int = 0  # 0 and 0: the adaptive policy
    quorum: int = 0
    priority: int = 0  # among the account's own jobs
    webhook_url: str = ""
    keep_logs: bool = False  # keep successful tasks' logs too


def spec_of(job: Job) -> JobSpec:
    """The spec a recorded job was submitted with (max_attempts as resolved then)."""
    return JobSpec(
        kind=job.kind,
        name=job.name,
        params=job.params,
        inputs=dict(job.inputs),
        requirements=job.requirements,
        max_attempts=job.max_attempts,
        idempotency_key=job.idempotency_key,
        replicas=job.replicas,
        quorum=job.quorum,
        priority=job.priority,
        webhook_url=job.webhook_url,
        keep_logs=job.keep_logs,
    )


def spec_differences(first: JobSpec, again: JobSpec, default_max_attempts: int) -> list[str]:
    """What a submit changes from the one its idempotency key first named, in words;
    empty for the same job. Params compare as JSON objects, so key order does not count."""
    differ: list[str] = []
    if first.kind != again.kind:
        differ.append(f"kind is {first.kind!r}, not {again.kind!r}")
    if first.name != again.name:
        differ.append(f"name is {first.name!r}, not {again.name!r}")
    differ += _param_differences(first.params, again.params)
    if first.inputs != again.inputs:
        names = sorted(
            n
            for n in first.inputs.keys() | again.inputs.keys()
            if first.inputs.get(n) != again.inputs.get(n)
        )
        differ.append(f"inputs differ in {names}")
    if asdict(first.requirements) != asdict(again.requirements):
        differ.append("requirements differ")
    attempts = (
        first.max_attempts or default_max_attempts,
        again.max_attempts or default_max_attempts,
    )
    if attempts[0] != attempts[1]:
        differ.append(f"attempt limit is {attempts[0]}, not {attempts[1]}")
    if (first.replicas, first.quorum) != (again.replicas, again.quorum):
        differ.append(
            f"policy is {first.quorum} of {first.replicas}, not {again.quorum} of {again.replicas}"
        )
    if first.priority != again.priority:
        differ.append(f"priority is {first.priority}, not {again.priority}")
    if first.webhook_url != again.webhook_url:
        differ.append("webhook URL differs")
    if first.keep_logs != again.keep_logs:
        differ.append(f"keep_logs is {first.keep_logs}, not {again.keep_logs}")
    return differ


def _param_differences(first: bytes, again: bytes) -> list[str]:
    if first == again:
        return []
    try:
        old, new = decode_params(first), decode_params(again)
    except CoordinatorError:
        return ["params differ"]
    keys = sorted(
        k for k in old.keys() | new.keys() if old.get(k, _MISSING) != new.get(k, _MISSING)
    )
    if not keys:
        return []
    if keys == ["tasks"]:
        return [f"task count is {old.get('tasks')}, not {new.get('tasks')}"]
    return [f"params differ in {keys}"]


_MISSING = object()
