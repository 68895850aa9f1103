"""Diagnostic job kinds: deterministic, cheap, for tests, the demo and benchmarks."""

from collections.abc import Sequence
from typing import Any

from sparegrid.coordinator.domain import FileRef
from sparegrid.coordinator.kinds.base import (
    MAX_TASKS_PER_JOB,
    Files,
    Plans,
    TaskPlan,
    bad,
    check_inputs,
    check_keys,
    int_param,
)

MAX_SLEEP_MS = 60_000


class Echo:
    name = "echo"
    work_unit = "task"
    description = "returns its data; params: tasks, data, sleep_ms (diagnostics, benchmarks)"

    def plan(
        self, params: dict[str, Any], inputs: dict[str, FileRef], files: Files
    ) -> Sequence[TaskPlan]:
        check_keys(self.name, params, {"tasks", "data", "sleep_ms"})
        check_inputs(self.name, inputs, set())
        tasks = int_param(self.name, params, "tasks", 1, 1, MAX_TASKS_PER_JOB)
        sleep_ms = int_param(self.name, params, "sleep_ms", 0, 0, MAX_SLEEP_MS)
        data = params.get("data", "")
        if not isinstance(data, str) or len(data) > 65536:
            raise bad(self.name, "'data' must be a string of at most 65536 characters")
        task = TaskPlan(params={"data": data, "sleep_ms": sleep_ms}, inputs=[])
        return Plans(tasks, lambda _: task)


class Checksum:
    name = "checksum"
    work_unit = "byte"
    description = "SHA-256 of each of N byte ranges of input 'data'; params: tasks"

    def plan(
        self, params: dict[str, Any], inputs: dict[str, FileRef], files: Files
    ) -> Sequence[TaskPlan]:
        check_keys(self.name, params, {"tasks"})
        check_inputs(self.name, inputs, {"data"})
        data = inputs["data"]
        limit = max(1, min(MAX_TASKS_PER_JOB, data.size))
        tasks = int_param(self.name, params, "tasks", 1, 1, limit)

        def byte_range(i: int) -> TaskPlan:
            lo, hi = i * data.size // tasks, (i + 1) * data.size // tasks
            return TaskPlan(params={"offset": lo, "length": hi - lo}, inputs=[data], work=hi - lo)

        return Plans(tasks, byte_range)
