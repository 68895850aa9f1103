"""Inference: a `torch.export` program run over shards of inputs, one task per shard.

Inputs: "model" (a .pt2 archive) and "shard_000000", "shard_000001", ... (safetensors
files whose tensors are the program's inputs, samples along the first dimension). The
archive is checked against the same allow-list the worker applies before loading it, and
every shard against the program's signature, so an unsafe program or a wrong shape is
refused here, naming the entry or showing both signatures.
"""

import math
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
from sparegrid.wire.pt2 import ProgramInfo, inspect_pt2
from sparegrid.wire.pt2zip import NotExported, UnsafeProgram
from sparegrid.wire.tensors import BadTensors, check_shard, read_header

PRECISIONS = ("fp32", "tf32", "bf16", "fp16")
MAX_BATCH = 1 << 16
FLOPS_PER_UNIT = 10**9  # credit work units are GFLOPs
_SHARD = re.compile(r"shard_(\d{6})")


class Inference:
    name = "inference"
    work_unit = "GFLOP"
    description = (
        "runs a torch.export program (input 'model') over safetensors shards "
        "('shard_000000', ...); params: batch_size, precision, deterministic, compile"
    )

    def plan(
        self, params: dict[str, Any], inputs: dict[str, FileRef], files: Files
    ) -> list[TaskPlan]:
        check_keys(self.name, params, {"batch_size", "precision", "deterministic", "compile"})
        batch_size = int_param(self.name, params, "batch_size", 64, 1, MAX_BATCH)
        precision = params.get("precision", "fp32")
        if precision not in PRECISIONS:
            raise bad(self.name, f"'precision' must be one of {list(PRECISIONS)}")
        deterministic = params.get("deterministic", False)
        compiled = params.get("compile", False)
        if not isinstance(deterministic, bool) or not isinstance(compiled, bool):
            raise bad(self.name, "'deterministic' and 'compile' must be true or false")
        model, shards = _split_inputs(inputs)
        program = _inspect(files, model)
        plans = []
        for index, shard in enumerate(shards):
            samples = _check_shard(files, program, shard, batch_size)
            task = {
                "batch_size": batch_size,
                "precision": precision,
                "deterministic": deterministic,
                "compile": compiled,
                "shard": index,
                "samples": samples,
            }
            work = max(1, math.ceil(program.flops_per_sample * samples / FLOPS_PER_UNIT))
            plans.append(TaskPlan(params=task, inputs=[model, shard], work=work))
        return plans


def _split_inputs(inputs: dict[str, FileRef]) -> tuple[FileRef, list[FileRef]]:
    model = inputs.get("model")
    if model is None:
        raise bad("inference", "input 'model' (the .pt2 program) is missing")
    others = sorted(set(inputs) - {"model"})
    wrong = [n for n in others if not _SHARD.fullmatch(n)]
    if wrong:
        raise bad("inference", f"inputs are 'model' and 'shard_NNNNNN'; got {wrong}")
    if not others:
        raise bad("inference", "no input shards ('shard_000000', ...)")
    if len(others) > MAX_TASKS_PER_JOB:
        raise bad("inference", f"more than {MAX_TASKS_PER_JOB} shards")
    expected = [f"shard_{i:06d}" for i in range(len(others))]
    if others != expected:
        missing = sorted(set(expected) - set(others))[:3]
        raise bad("inference", f"shards must be numbered from 0 without gaps; missing {missing}")
    return model, [inputs[n] for n in others]


def _inspect(files: Files, model: FileRef) -> ProgramInfo:
    try:
        return inspect_pt2(files.path(model.digest))
    except NotExported as exc:
        raise invalid("MODEL_NOT_EXPORTED", f"inference job: input 'model': {exc}") from None
    except UnsafeProgram as exc:
        raise invalid("UNSAFE_MODEL", f"inference job: input 'model': {exc}") from None


def _check_shard(files: Files, program: ProgramInfo, shard: FileRef, batch_size: int) -> int:
    try:
        tensors = read_header(files.path(shard.digest))
        return check_shard(program, tensors, batch_size, f"input {shard.name!r}")
    except BadTensors as exc:
        raise invalid("BAD_INPUTS", f"inference job: {exc}") from None
