"""Inference jobs: submit a model over inputs, then take the outputs back in input order.

See `sparegrid.sdk.inference` for what `model` and `inputs` may be; tensor work (export,
encoding, decoding) runs through `aoffload`.
"""

import tempfile
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any, Protocol

from sparegrid.sdk._async.job import AsyncJob
from sparegrid.sdk.backend import aoffload
from sparegrid.sdk.blobs import BlobInput, Progress
from sparegrid.sdk.errors import JobFailedError
from sparegrid.sdk.inference import (
    Plan,
    ShardOutput,
    check_options,
    concat,
    decode_outputs,
    job_params,
    job_requirements,
    split_batches,
)
from sparegrid.sdk.models import JobState, Requirements, TaskState, VerifyReport
from sparegrid.sdk.results import TaskResult


class AsyncInferenceClient(Protocol):
    """What an inference job needs of its client."""

    async def upload(self, source: BlobInput, *, on_progress: Progress | None = None) -> str: ...

    async def submit(
        self,
        kind: str,
        params: Mapping[str, Any] | None = None,
        inputs: Mapping[str, str] | None = None,
        *,
        name: str = "",
        requirements: Requirements | None = None,
        max_attempts: int = 0,
        idempotency_key: str | None = None,
        replicas: int = 0,
        quorum: int = 0,
        priority: int = 0,
        webhook_url: str = "",
        keep_logs: bool = False,
    ) -> AsyncJob: ...

    def watch(self, job_id: str, *, timeout: float | None = None) -> AsyncIterator[AsyncJob]: ...

    async def results_from(self, job_id: str, start: int, limit: int = 64) -> list[TaskResult]: ...


async def submit(
    client: AsyncInferenceClient,
    model: Any,
    inputs: Any,
    *,
    batch_size: int = 64,
    precision: str = "fp32",
    deterministic: bool = False,
    compile: bool = False,
    min_vram_gb: float = 0,
    device: str = "",
    shard_batches: int | None = None,
    name: str = "",
    replicas: int = 0,
    quorum: int = 0,
    max_attempts: int = 0,
    priority: int = 0,
    webhook_url: str = "",
    keep_logs: bool = False,
) -> "AsyncInferenceJob":
    """Checks and uploads the program and each shard (one in memory at a time), submits."""
    check_options(precision, batch_size, min_vram_gb, shard_batches)
    with tempfile.TemporaryDirectory(prefix="sparegrid-infer-") as tmp:
        plan = await aoffload(Plan, model, inputs, batch_size, shard_batches, Path(tmp))
        digests = {"model": await client.upload(plan.program_path)}
        while (shard := await aoffload(plan.next_shard)) is not None:
            digests[shard[0]] = await client.upload(shard[1])
    job = await client.submit(
        "inference",
        job_params(batch_size, precision, deterministic, compile),
        digests,
        name=name,
        requirements=job_requirements(device, min_vram_gb),
        max_attempts=max_attempts,
        replicas=replicas,
        quorum=quorum,
        priority=priority,
        webhook_url=webhook_url,
        keep_logs=keep_logs,
    )
    return AsyncInferenceJob(client, job, batch_size)


async def adecode(result: TaskResult) -> ShardOutput:
    """A finished task's outputs, rebuilt into the program's output structure."""
    meta = await result.output_async("meta.json")
    tensors = await result.output_async("outputs.safetensors")
    return await aoffload(decode_outputs, result.index, meta, tensors)


class AsyncInferenceJob:
    """A submitted inference job: `stream()` outputs in input order, or `result()` them all."""

    def __init__(self, client: AsyncInferenceClient, job: AsyncJob, batch_size: int) -> None:
        self.client = client
        self.job = job
        self.batch_size = batch_size
        self.nonfinite: dict[int, dict[str, int]] = {}  # shard -> output -> NaN/Inf count

    @property
    def id(self) -> str:
        return self.job.id

    @property
    def state(self) -> JobState:
        return self.job.state

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.job!r})"

    async def wait(self, timeout: float | None = None) -> "AsyncInferenceJob":
        await self.job.wait(timeout=timeout)
        return self

    async def shards(self, timeout: float | None = None) -> AsyncIterator[ShardOutput]:
        """Each shard's outputs, in order, as soon as it and those before it are done."""
        next_index = 0
        async for snapshot in self.client.watch(self.job.id, timeout=timeout):
            self.job = snapshot
            while next_index < snapshot.counts.total:
                page = await self.client.results_from(self.job.id, next_index)
                ready = _ready(page)
                if not ready or ready[0].index != next_index:
                    break  # the next shard is not done yet
                for result in ready:
                    if result.index != next_index:
                        break
                    shard = await adecode(result)
                    if shard.nonfinite:
                        self.nonfinite[next_index] = shard.nonfinite
                    yield shard
                    next_index += 1
            if snapshot.finished:
                break
        if self.job.state is not JobState.SUCCEEDED:
            raise JobFailedError(
                "JOB_" + self.job.state.name,
                f"job {self.job.id} {self.job.state.value}: {self.job.error}",
            )

    async def stream(self, timeout: float | None = None) -> AsyncIterator[Any]:
        """One output per input batch (the program's structure), in input order."""
        async for shard in self.shards(timeout):
            for batch in split_batches(shard.outputs, self.batch_size):
                yield batch

    async def result(self, timeout: float | None = None) -> Any:
        """All outputs, concatenated along the first dimension."""
        parts = [shard.outputs async for shard in self.shards(timeout)]
        return await aoffload(concat, parts)

    async def verify(self) -> VerifyReport:
        return await self.job.verify()


def _ready(page: list[TaskResult]) -> list[TaskResult]:
    """The page's succeeded results; JobFailedError when one of its tasks failed."""
    for result in page:
        if result.state is TaskState.FAILED:
            raise JobFailedError("TASK_FAILED", f"shard {result.index} failed: {result.error}")
    return [r for r in page if r.state is TaskState.SUCCEEDED]
