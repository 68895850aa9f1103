"""Built-in diagnostic executors, deterministic, for tests, the demo and benchmarks."""

import hashlib
import time
from typing import ClassVar

from sparegrid.worker.executors.base import BAD_PARAMS, ExecOutput, ExecTask, ExecutorError
from sparegrid.worker.executors.params import check_inputs, get_int, get_str, load_params

_CHUNK = 1 << 20
_MAX_OFFSET = 1 << 62


class EchoExecutor:
    """params {"data": str, "sleep_ms": 0..60000}: sleeps, then returns data as "out"."""

    name: ClassVar[str] = "echo"
    version: ClassVar[str] = "1.0"

    def run(self, task: ExecTask) -> list[ExecOutput]:
        params = load_params(task.params, self.name, ("data", "sleep_ms"))
        data = get_str(params, "data", self.name)
        sleep_ms = get_int(params, "sleep_ms", self.name, low=0, high=60_000, default=0)
        check_inputs(task.inputs, self.name, ())
        if sleep_ms:
            time.sleep(sleep_ms / 1000)  # the work this executor simulates
        return [ExecOutput("out", data.encode())]


class ChecksumExecutor:
    """params {"offset", "length"}, input "data": "sha256" = hex SHA-256 of that range."""

    name: ClassVar[str] = "checksum"
    version: ClassVar[str] = "1.0"

    def run(self, task: ExecTask) -> list[ExecOutput]:
        params = load_params(task.params, self.name, ("offset", "length"))
        offset = get_int(params, "offset", self.name, low=0, high=_MAX_OFFSET, default=None)
        length = get_int(params, "length", self.name, low=0, high=_MAX_OFFSET, default=None)
        check_inputs(task.inputs, self.name, ("data",))
        path = task.inputs["data"]
        size = path.stat().st_size
        if offset + length > size:
            raise ExecutorError(
                BAD_PARAMS,
                f"checksum range {offset}..{offset + length} is outside the {size}-byte input",
            )
        digest = hashlib.sha256()
        with path.open("rb") as f:
            f.seek(offset)
            left = length
            while left:
                chunk = f.read(min(_CHUNK, left))
                digest.update(chunk)
                left -= len(chunk)
        return [ExecOutput("sha256", digest.hexdigest().encode("ascii"))]
