"""A generation job re-attached from its id: the completions of a job whose submitter went
away (a `--wait` cut short by Ctrl-C, a closed laptop, a lost network).

The coordinator keeps token ids only; turning them into an OpenAI Batch output needs the
model's tokenizer and the requests, which only the submitting process held. The caller
gives the same model folder and batch file again, and they are checked against the digests
the job's inputs name before anything is decoded: the folder's files by hashing them, the
prompts by tokenizing them again exactly as the submit did (with the job's own
max_tokens, temperature and seed) and hashing the prompt files a submit would upload.
Nothing is uploaded. A file that differs is named in the refusal; completions decoded with
another tokenizer, or paired with other requests, would be wrong without looking wrong.

The checks hash and tokenize (blocking work): `AsyncClient.generate_attach` runs them
through `aoffload`, and `Client.generate_attach` is generated from it.
"""

import hashlib
import json
from pathlib import Path
from typing import Any

from sparegrid.sdk.batchfile import Tokenizer, _requests, check, prompt_files, tokenize
from sparegrid.sdk.blobs import hash_file
from sparegrid.sdk.errors import InvalidArgumentError
from sparegrid.sdk.models import JobSnapshot
from sparegrid.wire.llm import Prompt


def _differs(job_id: str, what: str, why: str) -> InvalidArgumentError:
    return InvalidArgumentError(
        "INPUT_MISMATCH", f"{what} is not what job {job_id} ran: {why}; nothing was written"
    )


def match_inputs(
    job: JobSnapshot, model_dir: Path, prompts: Path
) -> tuple[Tokenizer, list[dict[str, Any]], list[Prompt]]:
    """The tokenizer, requests and tokenized prompts of a generate job (a snapshot from
    get_job), for its completions to be decoded as the submitting process would have. A
    job of another kind is refused (NOT_A_GENERATE_JOB), and a model folder or prompts file
    other than the job's is refused naming the file (INPUT_MISMATCH)."""
    if job.kind != "generate":
        raise InvalidArgumentError(
            "NOT_A_GENERATE_JOB",
            f"job {job.id} is a {job.kind} job; only generate jobs have completions to "
            f"decode (`sparegrid job results {job.id} -o DIR` writes any job's outputs)",
        )
    if not job.inputs or not job.params:
        raise InvalidArgumentError(
            "INPUT_MISMATCH",
            f"the coordinator did not say what job {job.id} was submitted with (an older "
            "coordinator?), so the model and prompts cannot be checked; nothing was written",
        )
    params: dict[str, Any] = json.loads(job.params)
    inputs = dict(job.inputs)
    model_dir, prompts = Path(model_dir), Path(prompts)
    files, info = check(model_dir)
    model_inputs = {n: d for n, d in inputs.items() if not n.startswith("prompts_")}
    if set(files) != set(model_inputs):
        raise _differs(
            job.id,
            f"the model folder {model_dir}",
            f"it holds {len(files)} model files, the job ran with {len(model_inputs)}",
        )
    for name, path in files.items():
        if hash_file(path)[0] != model_inputs[name]:
            raise _differs(job.id, f"{path}", "its digest is not the one the job's input names")
    if not prompts.is_file():
        raise InvalidArgumentError("BAD_INPUT", f"--prompts: no such file {prompts}")
    try:
        requests, where = _requests(prompts, params["temperature"], params["seed"])
    except InvalidArgumentError as exc:
        raise _differs(job.id, f"the prompts file {prompts}", exc.message) from None
    tokenizer = Tokenizer(model_dir)
    encoded = tokenize(requests, tokenizer, info, int(params["max_tokens"]), where)
    mine = {name: hashlib.sha256(data).hexdigest() for name, data in prompt_files(encoded)}
    theirs = {n: d for n, d in inputs.items() if n.startswith("prompts_")}
    if mine != theirs:
        raise _differs(
            job.id,
            f"the prompts file {prompts}",
            f"its {len(requests)} requests, tokenized with {model_dir}'s tokenizer and chat "
            "template, do not hash to the job's prompts input",
        )
    return tokenizer, requests, encoded


__all__ = ["match_inputs"]
