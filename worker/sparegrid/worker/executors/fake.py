"""Executors that misbehave on purpose, for tests of the worker's fault handling."""

import os
from typing import ClassVar

from sparegrid.worker.executors.base import ExecOutput, ExecTask


class CrashExecutor:
    """Kills its own process, as a segfault or an OOM kill would."""

    name: ClassVar[str] = "crash"
    version: ClassVar[str] = "1.0"

    def run(self, task: ExecTask) -> list[ExecOutput]:
        os._exit(70)


class RaisingExecutor:
    """Raises an unexpected exception (not an ExecutorError)."""

    name: ClassVar[str] = "raise"
    version: ClassVar[str] = "1.0"

    def run(self, task: ExecTask) -> list[ExecOutput]:
        raise RuntimeError("this executor always fails")
