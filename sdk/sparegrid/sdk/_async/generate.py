"""Generation jobs: OpenAI Batch JSONL in, completions out in request order.

The text work (checking the model folder and the requests, chat templates, tokenizing,
decoding, Batch output lines) is in sparegrid.sdk.batchfile, shared by both flavours and
run through `aoffload`; this module uploads, submits and follows the job.
`AsyncGenerateJob.completions()` yields the completions in request order as tasks finish,
and `write_batch_output` writes the OpenAI Batch output format.
"""

import json
import os
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

from sparegrid.sdk._async.inference import AsyncInferenceClient
from sparegrid.sdk._async.job import AsyncJob
from sparegrid.sdk.attach import match_inputs
from sparegrid.sdk.backend import aoffload
from sparegrid.sdk.batchfile import (
    Completion,
    Prepared,
    Tokenizer,
    batch_line,
    decode_completions,
    prepare,
)
from sparegrid.sdk.credit import OUT_WEIGHT, check_balance
from sparegrid.sdk.errors import JobFailedError, UnimplementedError
from sparegrid.sdk.models import (
    Account,
    Estimate,
    Info,
    JobState,
    Requirements,
    TaskState,
    VerifyReport,
)
from sparegrid.wire.llm import Prompt


class AsyncGenerateClient(AsyncInferenceClient, Protocol):
    """What a generation job needs of its client: an inference job's calls (upload, submit,
    watch, results_from), and pricing, the job, and the account's balance."""

    async def estimate(
        self,
        kind: str,
        params: Mapping[str, Any] | None = None,
        inputs: Mapping[str, str] | None = None,
        *,
        name: str = "",
        requirements: Requirements | None = None,
        max_attempts: int = 0,
        replicas: int = 0,
        quorum: int = 0,
        priority: int = 0,
        webhook_url: str = "",
    ) -> Estimate: ...

    async def get_job(self, job_id: str) -> AsyncJob: ...

    async def info(self) -> Info: ...

    async def account(self) -> Account: ...


async def check_credit(
    client: AsyncGenerateClient, ready: Prepared, replicas: int, quorum: int
) -> None:
    """INSUFFICIENT_CREDIT when the account cannot pay even the least the job costs
    (sparegrid.sdk.credit); a coordinator without the calls is left to decide at submit."""
    try:
        info = await client.info()
        account = await client.account()
    except UnimplementedError:
        return
    check_balance(info, account, ready.prompts, len(ready.prompt_files), replicas, quorum)


async def upload(client: AsyncGenerateClient, ready: Prepared) -> dict[str, str]:
    """The job's inputs, uploaded: the model folder's files, then the prompt files."""
    digests = {name: await client.upload(path) for name, path in ready.files.items()}
    for name, data in ready.prompt_files:
        digests[name] = await client.upload(data)
    return digests


async def submit(
    client: AsyncGenerateClient,
    model_dir: Path,
    prompts: "str | os.PathLike[str] | Iterable[dict[str, Any]]",
    *,
    name: str = "",
    replicas: int = 0,
    quorum: int = 0,
    keep_logs: bool = False,
    **options: Any,
) -> "AsyncGenerateJob":
    """Submits the job; `options` are batchfile.prepare()'s (max_tokens, temperature,
    seed, ...). An account that cannot pay even the least the job costs is refused before
    anything is uploaded (INSUFFICIENT_CREDIT); the coordinator checks again."""
    ready = await aoffload(prepare, model_dir, prompts, **options)
    await check_credit(client, ready, replicas, quorum)
    job = await client.submit(
        "generate",
        ready.params,
        await upload(client, ready),
        name=name,
        requirements=ready.requirements,
        replicas=replicas,
        quorum=quorum,
        keep_logs=keep_logs,
    )
    return AsyncGenerateJob(client, job, ready.tokenizer, ready.requests, ready.prompts)


async def estimate(
    client: AsyncGenerateClient,
    model_dir: Path,
    prompts: "str | os.PathLike[str] | Iterable[dict[str, Any]]",
    *,
    name: str = "",
    replicas: int = 0,
    quorum: int = 0,
    **options: Any,
) -> Estimate:
    """What submit() would hold and charge, from the coordinator's own split and prices;
    the model and prompts are uploaded (as a render's estimate uploads its inputs), and no
    job is made."""
    ready = await aoffload(prepare, model_dir, prompts, **options)
    return await client.estimate(
        "generate",
        ready.params,
        await upload(client, ready),
        name=name,
        requirements=ready.requirements,
        replicas=replicas,
        quorum=quorum,
    )


async def attach(
    client: AsyncGenerateClient, job_id: str, model_dir: Path, prompts: Path
) -> "AsyncGenerateJob":
    """The AsyncGenerateJob of an existing generate job of this account, checked against
    the model folder and prompts file given (sparegrid.sdk.attach); one of another account
    is not found (JOB_NOT_FOUND). The job may still be running: completions() waits."""
    job = await client.get_job(job_id)
    tokenizer, requests, encoded = await aoffload(match_inputs, job.snapshot, model_dir, prompts)
    return AsyncGenerateJob(client, job, tokenizer, requests, encoded)


class AsyncGenerateJob:
    """A submitted generation job: `completions()` in request order as tasks finish."""

    def __init__(
        self,
        client: AsyncGenerateClient,
        job: AsyncJob,
        tokenizer: Tokenizer,
        requests: list[dict[str, Any]],
        prompts: list[Prompt],
    ) -> None:
        self.client = client
        self.job = job
        self.tokenizer = tokenizer
        self.requests = requests
        self.prompts = prompts

    @property
    def id(self) -> str:
        return self.job.id

    @property
    def state(self) -> JobState:
        return self.job.state

    @property
    def tokens_in(self) -> int:
        return sum(len(p.input_ids) for p in self.prompts)

    @property
    def tokens_out_max(self) -> int:
        return sum(p.max_tokens for p in self.prompts)

    def price_text(self) -> str:
        return (
            f"{self.tokens_in} prompt tokens, up to {self.tokens_out_max} generated "
            f"(x{OUT_WEIGHT}): {self.job.cost_held} credit held"
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.job!r})"

    async def wait(self, timeout: float | None = None) -> "AsyncGenerateJob":
        await self.job.wait(timeout=timeout)
        return self

    async def completions(self, timeout: float | None = None) -> AsyncIterator[Completion]:
        """Every request's completion, in request order, as soon as it is done."""
        done = 0
        next_index = 0
        async for snapshot in self.client.watch(self.job.id, timeout=timeout):
            self.job = snapshot
            while next_index < snapshot.counts.total:
                page = await self.client.results_from(self.job.id, next_index)
                for result in page:
                    if result.state is TaskState.FAILED:
                        raise JobFailedError(
                            "TASK_FAILED", f"task {result.index} failed: {result.error}"
                        )
                ready = [r for r in page if r.state is TaskState.SUCCEEDED]
                if not ready or ready[0].index != next_index:
                    break
                for result in ready:
                    if result.index != next_index:
                        break
                    data = await result.output_async("completions.json")
                    task = await aoffload(
                        decode_completions, self.tokenizer, self.prompts, done, data
                    )
                    for completion in task:
                        yield completion
                    done += len(task)
                    next_index += 1
            if snapshot.finished:
                break
        if self.job.state is not JobState.SUCCEEDED:
            raise JobFailedError(
                "JOB_" + self.job.state.name,
                f"job {self.job.id} {self.job.state.value}: {self.job.error}",
            )

    async def write_batch_output(self, path: Path, timeout: float | None = None) -> int:
        """Writes the OpenAI Batch output JSONL (one line per request, in order). It is
        written beside `path` and moved there once whole: a wait cut short (Ctrl-C, a
        failed job, a lost coordinator) leaves no partial file, and a file already at
        `path` stays as it was until the whole output replaces it."""
        path = Path(path)
        stage = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.partial")
        written = 0
        try:
            with open(stage, "w", encoding="utf-8") as f:
                async for done in self.completions(timeout):
                    request = self.requests[written]
                    f.write(json.dumps(batch_line(request, done, self.job.id)) + "\n")
                    written += 1
                    if written == len(self.requests):
                        break  # every request has its line
            os.replace(stage, path)
        finally:
            stage.unlink(missing_ok=True)
        return written

    async def verify(self) -> VerifyReport:
        return await self.job.verify()


__all__ = ["AsyncGenerateJob", "attach", "estimate", "submit"]
