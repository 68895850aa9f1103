"""The generate executor: decodes a task's prompts as one batch, or checks a claimed result.

A task names lines of a prompts file (token ids). They are decoded together with
transformers' `generate` (left padding, a KV cache), each stopping at an end-of-sequence
token or its own token limit. Outputs:

- "completions.json": each prompt's custom_id, generated token ids and finish reason
  ("stop" or "length"), canonical JSON: replicas on one device type agree byte for byte;
- "fingerprints.json": the hidden-state fingerprints (fingerprint.py);
- "meta.json": device, precision, token counts and timings (not compared).

A check (params carry "claimed": the completions of a result to check) runs one prefill
over every prompt and its claimed completion and returns "check.json": for each prompt,
its own fingerprints at the same positions (2k entries) and how far each claimed token was
from the argmax of what it should have been drawn from (`gap`, 0 when it was the argmax).
"""

import json
import os
import time
from pathlib import Path
from typing import Any, ClassVar

import torch
import transformers

from sparegrid.wire.llm import MAX_TASK_TOKENS, BadPrompts, read_prompts
from sparegrid.worker.executors.base import (
    BAD_INPUT,
    BAD_PARAMS,
    ExecOutput,
    ExecTask,
    ExecutorError,
)
from sparegrid.worker.executors.generate import fingerprint, sampling
from sparegrid.worker.executors.generate.model import DTYPES, Loaded, Models
from sparegrid.worker.executors.params import load_params

PARAMS = (
    "max_tokens", "temperature", "seed", "precision", "eos", "every", "k", "chunk", "lines",
    "tokens_in", "tokens_out", "claimed",
)  # fmt: skip
DEFAULT_CACHE_BYTES = 8 << 30


def _canonical(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


class GenerateExecutor:
    name: ClassVar[str] = "generate"
    version: ClassVar[str] = "1.0"

    def __init__(self) -> None:
        cache = int(os.environ.get("SPAREGRID_MODEL_CACHE_BYTES", DEFAULT_CACHE_BYTES))
        self.models = Models(cache)

    def run(self, task: ExecTask) -> list[ExecOutput]:
        params = load_params(task.params, self.name, PARAMS)
        precision = params.get("precision", "fp32")
        if precision not in DTYPES:
            raise ExecutorError(BAD_PARAMS, f"precision must be one of {list(DTYPES)}")
        device = torch.device("cuda:0" if task.device.kind == "cuda" else "cpu")
        inputs = dict(task.inputs)
        chunk = [n for n in inputs if n.startswith("prompts_")]
        if len(chunk) != 1 or "config" not in inputs:
            raise ExecutorError(BAD_INPUT, "a generate task has a config, weights and prompts")
        started = time.perf_counter()
        loaded = self.models.get(inputs, precision, device)
        loaded_at = time.perf_counter()
        prompts = self._prompts(inputs[chunk[0]], params, loaded)
        if "claimed" in params:
            out = _check(loaded, prompts, params, device)
            return [ExecOutput("check.json", _canonical(out))]
        with torch.inference_mode():
            completions, prints = _generate(loaded, prompts, params, device)
        done = time.perf_counter()
        generated = sum(len(c["tokens"]) for c in completions)
        meta = {
            "device": task.device.name,
            "precision": precision,
            "transformers": transformers.__version__,
            "tokens_in": sum(len(p.input_ids) for p in prompts),
            "tokens_out": generated,
            "load_seconds": round(loaded_at - started, 4),
            "generate_seconds": round(done - loaded_at, 4),
        }
        return [
            ExecOutput("completions.json", _canonical({"completions": completions})),
            ExecOutput("fingerprints.json", _canonical({"rows": prints})),
            ExecOutput("meta.json", _canonical(meta)),
        ]

    def _prompts(self, path: Path, params: dict[str, Any], loaded: Loaded) -> list[Any]:
        config = loaded.config
        try:
            prompts = read_prompts(
                path.read_bytes(),
                "prompts",
                int(config["vocab_size"]),
                int(config["max_position_embeddings"]),
                int(params["max_tokens"]),
            )
        except BadPrompts as exc:
            raise ExecutorError(BAD_INPUT, str(exc)) from None
        start, end = params["lines"]
        if not 0 <= start < end <= len(prompts):
            raise ExecutorError(BAD_PARAMS, f"lines {start}..{end} are not in the prompts file")
        chosen = prompts[start:end]
        width = max(len(p.input_ids) for p in chosen) + max(p.max_tokens for p in chosen)
        if len(chosen) * width > MAX_TASK_TOKENS:  # the coordinator splits within this
            raise ExecutorError(
                BAD_PARAMS,
                f"{len(chosen)} prompts padded to {width} tokens are over the "
                f"{MAX_TASK_TOKENS} tokens a task may hold",
            )
        return chosen


def _padded(
    rows: list[list[int]], pad: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids left-padded to one length, and the attention mask."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = torch.tensor(row)
        mask[i, width - len(row) :] = 1
    return ids.to(device), mask.to(device)


class _Noise(transformers.LogitsProcessor):
    """Seeded Gumbel noise (sampling.py) for sampling with greedy search's argmax."""

    def __init__(self, params: dict[str, Any], ids: list[str], width: int) -> None:
        self.temperature = float(params["temperature"])
        self.seed = int(params["seed"])
        self.ids = ids
        self.width = width

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        step = input_ids.shape[1] - self.width
        steps = [step] * len(self.ids)
        return sampling.scores(scores, self.temperature, self.seed, self.ids, steps)


class _Limits(transformers.StoppingCriteria):
    """Each sequence stops at its own token limit."""

    def __init__(self, limits: list[int], width: int) -> None:
        self.limits = torch.tensor(limits)
        self.width = width

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        done = input_ids.shape[1] - self.width >= self.limits
        return done.to(input_ids.device)


def _generate(
    loaded: Loaded, prompts: list[Any], params: dict[str, Any], device: torch.device
) -> tuple[list[dict[str, Any]], list[list[dict[str, Any]]]]:
    eos = [int(e) for e in params.get("eos") or []]
    pad = eos[0] if eos else 0
    ids, mask = _padded([p.input_ids for p in prompts], pad, device)
    width, k = ids.shape[1], int(params["k"])
    captured: list[tuple[torch.Tensor, torch.Tensor]] = []

    def hook(module: Any, args: Any, output: Any) -> None:
        captured.append(fingerprint.top(output.last_hidden_state[:, -1, :], k))

    config = transformers.GenerationConfig(  # type: ignore[no-untyped-call]
        max_new_tokens=max(p.max_tokens for p in prompts),
        do_sample=False,
        eos_token_id=eos or None,
        pad_token_id=pad,
    )
    processors = transformers.LogitsProcessorList()
    if params["temperature"] > 0:
        processors.append(_Noise(params, [p.custom_id for p in prompts], width))
    stops = transformers.StoppingCriteriaList([_Limits([p.max_tokens for p in prompts], width)])
    handle = loaded.model.base_model.register_forward_hook(hook)
    try:
        out = loaded.model.generate(
            input_ids=ids,
            attention_mask=mask,
            generation_config=config,
            logits_processor=processors,
            stopping_criteria=stops,
        )
    finally:
        handle.remove()
    return _collect(out[:, width:].tolist(), prompts, eos, captured, int(params["every"]))


def _collect(
    rows: list[list[int]],
    prompts: list[Any],
    eos: list[int],
    captured: list[tuple[torch.Tensor, torch.Tensor]],
    every: int,
) -> tuple[list[dict[str, Any]], list[list[dict[str, Any]]]]:
    completions, prints = [], []
    for b, (row, prompt) in enumerate(zip(rows, prompts, strict=True)):
        tokens, reason = [], "length"
        for token in row[: prompt.max_tokens]:
            tokens.append(token)
            if token in eos:
                reason = "stop"
                break
        completions.append(
            {"custom_id": prompt.custom_id, "tokens": tokens, "finish_reason": reason}
        )
        chosen = fingerprint.positions(len(tokens), every)
        prints.append(
            [{"pos": t, **fingerprint.encode(captured[t][0][b], captured[t][1][b])} for t in chosen]
        )
    return completions, prints


def _check(
    loaded: Loaded, prompts: list[Any], params: dict[str, Any], device: torch.device
) -> dict[str, Any]:
    claimed = params["claimed"]
    vocab = int(loaded.config["vocab_size"])
    if not isinstance(claimed, list) or len(claimed) != len(prompts):
        return {"rows": [_refuted(p) for p in prompts]}  # a result that fits no prompt
    # a completion no honest node could return (ids outside the vocabulary, longer than
    # its limit) is refuted without running it, so that its node is outvoted
    fits = [
        isinstance(c, list)
        and len(c) <= p.max_tokens
        and all(type(t) is int and 0 <= t < vocab for t in c)
        for p, c in zip(prompts, claimed, strict=True)
    ]
    claimed = [c if ok else [] for c, ok in zip(claimed, fits, strict=True)]
    found = _prefill(loaded, prompts, claimed, params, device)
    return {
        "rows": [r if ok else _refuted(p) for r, p, ok in zip(found, prompts, fits, strict=True)]
    }


def _refuted(prompt: Any) -> dict[str, Any]:
    return {"fp": [], "gap": float("inf"), "at": 0, "limit": prompt.max_tokens}


def _prefill(
    loaded: Loaded,
    prompts: list[Any],
    claimed: list[list[int]],
    params: dict[str, Any],
    device: torch.device,
) -> list[dict[str, Any]]:
    rows = [p.input_ids + c for p, c in zip(prompts, claimed, strict=True)]
    eos = [int(e) for e in params.get("eos") or []]
    ids, mask = _padded(rows, eos[0] if eos else 0, device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    states: list[torch.Tensor] = []

    def hook(module: Any, args: Any, output: Any) -> None:
        states.append(output.last_hidden_state)

    handle = loaded.model.base_model.register_forward_hook(hook)
    try:
        with torch.inference_mode():
            out = loaded.model(
                input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False
            )
    finally:
        handle.remove()
    hidden, logits = states[0], out.logits
    width, k, every = ids.shape[1], int(params["k"]), int(params["every"])
    results = []
    for b, (prompt, completion) in enumerate(zip(prompts, claimed, strict=True)):
        if not completion:
            results.append({"fp": [], "gap": 0.0, "at": -1, "limit": prompt.max_tokens})
            continue
        first = width - len(rows[b]) + len(prompt.input_ids) - 1  # predicts token 0
        span = slice(first, first + len(completion))
        steps = list(range(len(completion)))
        scores = sampling.scores(
            logits[b, span], float(params["temperature"]), int(params["seed"]),
            [prompt.custom_id] * len(steps), steps,
        )  # fmt: skip
        chosen = scores.gather(-1, torch.tensor(completion, device=device)[:, None])[:, 0]
        gaps = scores.max(-1).values - chosen
        at = int(gaps.argmax())
        fps = []
        for t in fingerprint.positions(len(completion), every):
            idx, val = fingerprint.top(hidden[b, first + t], 2 * k)
            fps.append({"pos": t, **fingerprint.encode(idx, val)})
        results.append({"fp": fps, "gap": float(gaps[at]), "at": at, "limit": prompt.max_tokens})
    return results
