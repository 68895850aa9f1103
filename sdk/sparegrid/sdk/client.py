"""The synchronous clients, on grpc's sync API: `Client` for jobs and blobs, `AdminClient`.

Generated from the asyncio clients (`sparegrid.sdk._async.client`) by scripts/unasync,
except `Client.generate`, `Client.generate_attach` and `Client.generate_estimate`, which are sync-only for now (the tokenizer and the model folder's
upload run in the caller's thread; an asyncio flavour is not written yet).
"""

import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sparegrid.sdk._sync.admin import AdminClient
from sparegrid.sdk._sync.client import DEFAULT_TIMEOUT
from sparegrid.sdk._sync.client import Client as _GeneratedClient
from sparegrid.sdk.config import PathLike

if TYPE_CHECKING:
    from sparegrid.sdk.generate import GenerateJob
    from sparegrid.sdk.models import Estimate

__all__ = ["DEFAULT_TIMEOUT", "AdminClient", "Client", "PathLike"]


class Client(_GeneratedClient):
    __doc__ = _GeneratedClient.__doc__

    def generate(
        self,
        model_dir: "str | os.PathLike[str]",
        prompts: "str | os.PathLike[str] | Iterable[dict[str, Any]]",
        **options: Any,
    ) -> "GenerateJob":
        """Decodes OpenAI Batch requests (a JSONL path, or the requests as dicts) with the
        language model in `model_dir` (config.json, tokenizer.json, safetensors); see
        sparegrid.sdk.generate. Options: max_tokens (256), temperature (0), seed, precision
        (fp32, bf16, fp16), device, min_vram_gb, task_tokens, name, replicas, quorum,
        keep_logs.
        `.completions()` yields them in request order. An account holding less than the
        least the job costs is refused (INSUFFICIENT_CREDIT) before anything is uploaded."""
        from sparegrid.sdk import generate

        path = Path(prompts) if isinstance(prompts, str | os.PathLike) else prompts
        return generate.submit(self, Path(model_dir), path, **options)

    def generate_attach(
        self,
        job_id: str,
        model_dir: "str | os.PathLike[str]",
        prompts: "str | os.PathLike[str]",
    ) -> "GenerateJob":
        """The GenerateJob of a generate job submitted earlier (whose submitter went away),
        given the same model folder and batch file; both are checked against the job's
        input digests first (sparegrid.sdk.attach). Nothing is uploaded or charged."""
        from sparegrid.sdk.attach import attach

        return attach(self, job_id, Path(model_dir), Path(prompts))

    def generate_estimate(
        self,
        model_dir: "str | os.PathLike[str]",
        prompts: "str | os.PathLike[str] | Iterable[dict[str, Any]]",
        **options: Any,
    ) -> "Estimate":
        """What `generate` with these arguments would cost (tasks, tokens, credit held),
        priced by the coordinator; the model and prompts are checked and uploaded as a
        submit would, and no job is made. Takes generate's options but keep_logs."""
        from sparegrid.sdk import generate

        path = Path(prompts) if isinstance(prompts, str | os.PathLike) else prompts
        return generate.estimate(self, Path(model_dir), path, **options)
