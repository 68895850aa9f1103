"""Executors: the plugin interface, the registry and the built-in diagnostics."""

from sparegrid.worker.executors.base import (
    BAD_INPUT,
    BAD_PARAMS,
    EXECUTOR_CRASHED,
    EXECUTOR_ERROR,
    TIMEOUT,
    DeviceRef,
    ExecOutput,
    ExecTask,
    Executor,
    ExecutorError,
)
from sparegrid.worker.executors.registry import (
    ENTRY_POINT_GROUP,
    FAKE_TARGETS,
    ExecutorRegistry,
    ExecutorSpec,
)

__all__ = [
    "BAD_INPUT",
    "BAD_PARAMS",
    "ENTRY_POINT_GROUP",
    "EXECUTOR_CRASHED",
    "EXECUTOR_ERROR",
    "FAKE_TARGETS",
    "TIMEOUT",
    "DeviceRef",
    "ExecOutput",
    "ExecTask",
    "Executor",
    "ExecutorError",
    "ExecutorRegistry",
    "ExecutorSpec",
]
