"""Job kinds: each checks a job's parameters at submit and splits it into tasks.

A worker runs the task side of a kind (its executor); the coordinator only plans, so a bad
job is refused at submit, before anything is charged or sent to a volunteer.
"""

import itertools
import json
from dataclasses import dataclass
from typing import Any, Protocol

from sparegrid.coordinator.domain import FileRef
from sparegrid.coordinator.errors import CoordinatorError, invalid

MAX_TASKS_PER_JOB = 1_000_000
MAX_SLEEP_MS = 60_000


@dataclass
class TaskPlan:
    params: dict[str, Any]
    inputs: list[FileRef]


class JobKind(Protocol):
    name: str
    description: str

    def plan(self, params: dict[str, Any], inputs: dict[str, FileRef]) -> list[TaskPlan]:
        """Raises CoordinatorError(INVALID, BAD_PARAMS, ...) saying what is wrong."""
        ...


def _bad(kind: str, message: str) -> CoordinatorError:
    return invalid("BAD_PARAMS", f"{kind} job: {message}")


def _int_param(
    kind: str, params: dict[str, Any], key: str, default: int, low: int, high: int
) -> int:
    value = params.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(kind, f"{key!r} must be an integer, got {value!r}")
    if not low <= value <= high:
        raise _bad(kind, f"{key!r} must be between {low} and {high}, got {value}")
    return value


def _check_keys(kind: str, params: dict[str, Any], known: set[str]) -> None:
    unknown = sorted(set(params) - known)
    if unknown:
        raise _bad(kind, f"unknown parameter(s) {unknown}; known: {sorted(known)}")


def _check_inputs(kind: str, inputs: dict[str, FileRef], expected: set[str]) -> None:
    if set(inputs) != expected:
        want = sorted(expected) or "none"
        raise _bad(kind, f"expects inputs {want}, got {sorted(inputs) or 'none'}")


class Echo:
    name = "echo"
    description = "returns its data; params: tasks, data, sleep_ms (diagnostics, benchmarks)"

    def plan(self, params: dict[str, Any], inputs: dict[str, FileRef]) -> list[TaskPlan]:
        _check_keys(self.name, params, {"tasks", "data", "sleep_ms"})
        _check_inputs(self.name, inputs, set())
        tasks = _int_param(self.name, params, "tasks", 1, 1, MAX_TASKS_PER_JOB)
        sleep_ms = _int_param(self.name, params, "sleep_ms", 0, 0, MAX_SLEEP_MS)
        data = params.get("data", "")
        if not isinstance(data, str) or len(data) > 65536:
            raise _bad(self.name, "'data' must be a string of at most 65536 characters")
        task = {"data": data, "sleep_ms": sleep_ms}
        return [TaskPlan(params=task, inputs=[]) for _ in range(tasks)]


class Checksum:
    name = "checksum"
    description = "SHA-256 of each of N byte ranges of input 'data'; params: tasks"

    def plan(self, params: dict[str, Any], inputs: dict[str, FileRef]) -> list[TaskPlan]:
        _check_keys(self.name, params, {"tasks"})
        _check_inputs(self.name, inputs, {"data"})
        data = inputs["data"]
        limit = max(1, min(MAX_TASKS_PER_JOB, data.size))
        tasks = _int_param(self.name, params, "tasks", 1, 1, limit)
        bounds = [i * data.size // tasks for i in range(tasks + 1)]
        return [
            TaskPlan(params={"offset": lo, "length": hi - lo}, inputs=[data])
            for lo, hi in itertools.pairwise(bounds)
        ]


BUILTIN_KINDS: tuple[JobKind, ...] = (Echo(), Checksum())


def decode_params(raw: bytes) -> dict[str, Any]:
    """Job parameters are a JSON object (empty bytes mean {})."""
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise invalid("BAD_PARAMS", f"params are not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise invalid("BAD_PARAMS", f"params must be a JSON object, got {type(value).__name__}")
    return value


def encode_params(params: dict[str, Any]) -> bytes:
    return json.dumps(params, separators=(",", ":"), sort_keys=True).encode()
