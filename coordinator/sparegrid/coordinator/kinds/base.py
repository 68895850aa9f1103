"""What a job kind is: it checks a job's parameters at submit and splits it into tasks.

A worker runs the task side of a kind (its executor); the coordinator only plans, so a bad
job is refused at submit, before anything is charged or sent to a volunteer.
"""

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, overload

from sparegrid.coordinator.domain import MAX_BIGINT, FileRef
from sparegrid.coordinator.errors import CoordinatorError, invalid

MAX_TASKS_PER_JOB = 1_000_000
# Work units of one job, its tasks' together: a task's are a BIGINT, and an estimate sends
# the job's sum as an unsigned 64-bit integer.
MAX_JOB_WORK = MAX_BIGINT


@dataclass
class TaskPlan:
    params: dict[str, Any]
    inputs: list[FileRef]
    # Credit units for this task, computed from the work itself (bytes, FLOPs x samples,
    # pixels x samples), never from anything a node claims.
    work: int = 1


class Plans(Sequence[TaskPlan]):
    """`count` task plans made one at a time by `make(index)` when read: a job of a
    million alike tasks is planned without a million objects."""

    def __init__(self, count: int, make: Callable[[int], TaskPlan]) -> None:
        self._count = count
        self._make = make

    def __len__(self) -> int:
        return self._count

    @overload
    def __getitem__(self, index: int) -> TaskPlan: ...

    @overload
    def __getitem__(self, index: slice) -> list[TaskPlan]: ...

    def __getitem__(self, index: int | slice) -> TaskPlan | list[TaskPlan]:
        if isinstance(index, slice):
            return [self._make(i) for i in range(*index.indices(self._count))]
        if not -self._count <= index < self._count:
            raise IndexError(index)
        return self._make(index % self._count)


class Files(Protocol):
    """Where an uploaded input's verified bytes are, for kinds that inspect them at submit."""

    def path(self, digest: str) -> Path: ...


class JobKind(Protocol):
    name: str
    description: str

    def plan(
        self, params: dict[str, Any], inputs: dict[str, FileRef], files: Files
    ) -> Sequence[TaskPlan]:
        """The job's tasks in order (a list, or `Plans` made when read); raises
        CoordinatorError(INVALID, BAD_PARAMS, ...) saying what is wrong. It may run on a
        thread of its own: it reads only its arguments and the input files."""
        ...


def bad(kind: str, message: str) -> CoordinatorError:
    return invalid("BAD_PARAMS", f"{kind} job: {message}")


def check_job_work(kind: "JobKind", work: int) -> None:
    """Refuses a job whose tasks come to more than MAX_JOB_WORK work units."""
    if work > MAX_JOB_WORK:
        unit = getattr(kind, "work_unit", "unit")
        raise bad(
            kind.name,
            f"its tasks come to more than {MAX_JOB_WORK:,} {unit}s of work (2^63 - 1), the "
            "most one job may hold: split it into smaller jobs",
        )


def int_param(
    kind: str, params: dict[str, Any], key: str, default: int, low: int, high: int
) -> int:
    value = params.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad(kind, f"{key!r} must be an integer, got {value!r}")
    if not low <= value <= high:
        raise bad(kind, f"{key!r} must be between {low} and {high}, got {value}")
    return value


def check_keys(kind: str, params: dict[str, Any], known: set[str]) -> None:
    unknown = sorted(set(params) - known)
    if unknown:
        raise bad(kind, f"unknown parameter(s) {unknown}; known: {sorted(known)}")


def check_inputs(kind: str, inputs: dict[str, FileRef], expected: set[str]) -> None:
    if set(inputs) != expected:
        want = sorted(expected) or "none"
        raise bad(kind, f"expects inputs {want}, got {sorted(inputs) or 'none'}")


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
