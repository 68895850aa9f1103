"""Generation: an open-weight language model decodes prompts, a batch of them per task.

Inputs: the model's files ("config", "tokenizer", "weights_000", ...: JSON and
safetensors, never code; sparegrid.wire.llm) and "prompts_000000", ... (JSON lines of
token ids, tokenized by the client). Each prompts file is split into tasks of whole
prompts by token count: a task's prompts padded to its longest, plus room for the most
tokens any may generate (what a worker's batch holds), stay within `task_tokens`. A task's inputs are the model's config and weights and its prompts
file; its params name its lines. Its credit units are weighted tokens: every prompt token
counts 1 and every token it may generate `OUT_WEIGHT` (decoding one at a time is what
costs).

A check of a result (the adaptive policy's spot check, spotcheck.py) is a task whose
params carry the claimed completions: the checker runs one prefill over prompt and
completion and returns its fingerprints (comparators.GenerateComparator).
"""

import re
from typing import Any

from sparegrid.coordinator.domain import FileRef
from sparegrid.coordinator.errors import invalid
from sparegrid.coordinator.kinds.base import (
    MAX_TASKS_PER_JOB,
    Files,
    TaskPlan,
    bad,
    check_keys,
    int_param,
)
from sparegrid.wire.llm import (
    CONFIG,
    MAX_NEW_TOKENS,
    MAX_PROMPTS_FILE,
    MAX_TASK_TOKENS,
    PRECISIONS,
    TOKENIZER,
    BadModel,
    BadPrompts,
    ModelInfo,
    check_model,
    read_prompts,
)

NAME = "generate"
OUT_WEIGHT = 4
FINGERPRINT_EVERY = 8  # a fingerprint every this many generated tokens, and at the last
FINGERPRINT_K = 32  # of the largest hidden-state entries
_PROMPTS = re.compile(r"prompts_(\d{6})")
_WEIGHTS = re.compile(r"weights_(\d{3})")


class Generate:
    name = NAME
    work_unit = "token"
    description = (
        "decodes prompts (inputs 'prompts_000000', ...: token ids) with a language model "
        "('config', 'tokenizer', 'weights_000', ...); params: max_tokens, temperature, seed, "
        "precision, task_tokens"
    )

    def plan(
        self, params: dict[str, Any], inputs: dict[str, FileRef], files: Files
    ) -> list[TaskPlan]:
        check_keys(NAME, params, {"max_tokens", "temperature", "seed", "precision", "task_tokens"})
        max_tokens = int_param(NAME, params, "max_tokens", 256, 1, MAX_NEW_TOKENS)
        seed = int_param(NAME, params, "seed", 0, 0, 2**63 - 1)
        budget = int_param(NAME, params, "task_tokens", 16_384, 1, MAX_TASK_TOKENS)
        temperature = params.get("temperature", 0.0)
        if isinstance(temperature, bool) or not isinstance(temperature, int | float):
            raise bad(NAME, "'temperature' must be a number")
        if not 0 <= temperature <= 2:
            raise bad(NAME, f"'temperature' must be from 0 to 2, got {temperature}")
        precision = params.get("precision", "fp32")
        if precision not in PRECISIONS:
            raise bad(NAME, f"'precision' must be one of {list(PRECISIONS)}")
        model, weights, chunks = _split_inputs(inputs)
        info = _check_model(files, model, weights)
        task_inputs = [inputs[CONFIG], *weights]  # the tokenizer stays with the client
        common = {
            "max_tokens": max_tokens,
            "temperature": float(temperature),
            "seed": seed,
            "precision": precision,
            "eos": list(info.eos),
            "every": FINGERPRINT_EVERY,
            "k": min(FINGERPRINT_K, info.hidden_size),
        }
        plans: list[TaskPlan] = []
        for index, chunk in enumerate(chunks):
            plans.extend(_chunk_plans(files, info, common, index, chunk, task_inputs, budget))
            if len(plans) > MAX_TASKS_PER_JOB:
                raise bad(NAME, f"more than {MAX_TASKS_PER_JOB} tasks")
        return plans


def _chunk_plans(
    files: Files,
    info: ModelInfo,
    common: dict[str, Any],
    index: int,
    chunk: FileRef,
    model: list[FileRef],
    budget: int,
) -> list[TaskPlan]:
    label = f"input {chunk.name!r}"
    if chunk.size > MAX_PROMPTS_FILE:
        raise bad(NAME, f"{label} is over {MAX_PROMPTS_FILE >> 20} MiB; split it")
    try:
        prompts = read_prompts(
            files.path(chunk.digest).read_bytes(),
            label,
            info.vocab_size,
            info.context,
            common["max_tokens"],
        )
    except BadPrompts as exc:
        raise invalid(exc.code, f"{NAME} job: {exc}") from None
    # A worker decodes a task's prompts as one batch, each left-padded to the longest and
    # given room for the most tokens any may generate: that padded size, not the sum of the
    # prompts', is what its KV cache and activations hold, and what must stay in budget
    # (one prompt of 4,000 tokens and 6,000 of one, summing to 16k, pad to 24M).
    plans, start, width, new = [], 0, 0, 0
    for end, prompt in enumerate(prompts):
        if len(prompt.input_ids) + prompt.max_tokens > budget:
            raise invalid(
                "PROMPT_TOO_LONG",
                f"{NAME} job: {label} line {end + 1} ({prompt.custom_id}): "
                f"{len(prompt.input_ids)} prompt tokens + {prompt.max_tokens} to generate "
                f"exceed the task budget of {budget} tokens; raise task_tokens (at most "
                f"{MAX_TASK_TOKENS})",
            )
        wide = max(width, len(prompt.input_ids))
        most = max(new, prompt.max_tokens)
        if end > start and (end + 1 - start) * (wide + most) > budget:
            plans.append(_plan(common, index, chunk, model, prompts, start, end))
            start, wide, most = end, len(prompt.input_ids), prompt.max_tokens
        width, new = wide, most
    plans.append(_plan(common, index, chunk, model, prompts, start, len(prompts)))
    return plans


def _plan(
    common: dict[str, Any],
    index: int,
    chunk: FileRef,
    model: list[FileRef],
    prompts: list[Any],
    start: int,
    end: int,
) -> TaskPlan:
    tokens_in = sum(len(p.input_ids) for p in prompts[start:end])
    tokens_out = sum(p.max_tokens for p in prompts[start:end])
    params = {
        **common,
        "chunk": index,
        "lines": [start, end],
        "tokens_in": tokens_in,
        "tokens_out": tokens_out,
    }
    return TaskPlan(params=params, inputs=[*model, chunk], work=task_work(tokens_in, tokens_out))


def task_work(tokens_in: int, tokens_out: int) -> int:
    return max(1, tokens_in + OUT_WEIGHT * tokens_out)


def check_work(params: dict[str, Any]) -> int:
    """A check is one prefill over prompts and completions: every token counts 1."""
    claimed = params.get("claimed") or []
    return max(1, int(params.get("tokens_in", 0)) + sum(len(c) for c in claimed))


def _split_inputs(
    inputs: dict[str, FileRef],
) -> tuple[list[FileRef], list[FileRef], list[FileRef]]:
    known = {CONFIG, TOKENIZER}
    weights = sorted(n for n in inputs if _WEIGHTS.fullmatch(n))
    chunks = sorted(n for n in inputs if _PROMPTS.fullmatch(n))
    wrong = sorted(set(inputs) - known - set(weights) - set(chunks))
    if wrong:
        raise bad(
            NAME,
            f"inputs are 'config', 'tokenizer', 'weights_NNN' and 'prompts_NNNNNN'; got {wrong}",
        )
    if CONFIG not in inputs or TOKENIZER not in inputs or not weights:
        raise invalid(
            "BAD_MODEL", f"{NAME} job: the model needs 'config', 'tokenizer' and 'weights_000'"
        )
    if not chunks:
        raise bad(NAME, "no prompts ('prompts_000000', ...)")
    if chunks != [f"prompts_{i:06d}" for i in range(len(chunks))]:
        raise bad(NAME, "prompts files must be numbered from 0 without gaps")
    model = [inputs[CONFIG], inputs[TOKENIZER]]
    return model, [inputs[n] for n in weights], [inputs[n] for n in chunks]


def _check_model(files: Files, model: list[FileRef], weights: list[FileRef]) -> ModelInfo:
    paths = {ref.name: files.path(ref.digest) for ref in [*model, *weights]}
    try:
        return check_model(paths)
    except BadModel as exc:
        raise invalid(exc.code, f"{NAME} job: {exc}") from None
