"""Inference jobs from the SDK: export, shard, upload, submit; then outputs back in order.

    job = client.infer(model, inputs, batch_size=64, precision="bf16")
    for out in job.stream():   # one output per input batch, in input order
        ...
    outputs = job.result()     # everything, concatenated along the first dimension

`model` is an `nn.Module` (exported here with `torch.export`, with a dynamic batch
dimension; the example is the first batch of `inputs`) or the path of a saved `.pt2`.
`inputs` is a tensor, a tuple or dict of tensors (by the program's input names), an
iterable of such batches, or the path of a safetensors file, a folder of them or a Parquet
or Arrow table (`sparegrid.sdk.inputfiles`, read a slice at a time). Inputs are cut into shards of whole
batches, each a safetensors file and a task. The program and every shard are checked here
with the same rules the coordinator and the workers apply, before anything is uploaded.

Needs torch and safetensors (`pip install sparegrid[worker]` or any torch >= 2.4).
This module holds the work both flavours share (export, shards, checks, decoding); the
submit and the job handles are `sparegrid.sdk._async.inference` and its generated twin.
"""

import contextlib
import json
import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sparegrid.sdk import inputfiles
from sparegrid.sdk.errors import InvalidArgumentError
from sparegrid.sdk.models import DeviceKind, Requirements
from sparegrid.sdk.results import TaskResult
from sparegrid.wire.pt2 import ProgramInfo, inspect_pt2
from sparegrid.wire.pt2zip import EXPORT_HINT, NotExported, UnsafeProgram
from sparegrid.wire.tensors import BadTensors, header_of
from sparegrid.wire.tensors import check_shard as check_shard_header

if TYPE_CHECKING:
    import torch

PRECISIONS = ("fp32", "tf32", "bf16", "fp16")
SHARD_BYTES = 64 << 20  # a shard is at most this many input bytes...
SHARD_BATCHES = 16  # ...and at most this many batches
MAX_EXPORT_BATCH = 1 << 16


@dataclass(frozen=True)
class ShardOutput:
    index: int
    outputs: Any  # the program's output structure, samples along the first dimension
    nonfinite: dict[str, int]  # output -> count of NaN/Inf values
    meta: dict[str, Any]


def _torch() -> Any:
    try:
        import torch
    except ImportError:
        raise InvalidArgumentError(
            "TORCH_MISSING", "inference jobs need torch: pip install 'sparegrid[worker]'"
        ) from None
    return torch


# --- the program ------------------------------------------------------------------------


def export_program(model: Any, example: "tuple[torch.Tensor, ...]", dest: Path) -> Path:
    """Exports `model` with a dynamic first (batch) dimension on every input; saves a .pt2."""
    torch = _torch()
    if example[0].shape[0] < 2:  # a batch of one would be specialised to exactly one
        example = tuple(torch.cat([t, t]) for t in example)
    batch = torch.export.Dim("batch", min=1, max=MAX_EXPORT_BATCH)
    shapes = tuple({0: batch} for _ in example)
    try:
        with _quiet_tracer():
            program = torch.export.export(model.eval(), example, dynamic_shapes=shapes)
    except Exception as exc:
        taken = ", ".join(_shape_text(t) for t in example)
        raise InvalidArgumentError(
            "EXPORT_FAILED",
            f"torch.export could not export the model with inputs {taken} (a batch of the "
            f"inputs): {str(exc).rstrip('.')}; check that the inputs' shape and dtype are what the model takes",
        ) from exc
    mixed = _mixed_dtypes(program)
    if mixed:
        taken = ", ".join(_shape_text(t) for t in example)
        raise InvalidArgumentError(
            "BAD_INPUTS",
            f"the model cannot take inputs {taken}: {mixed}; give the inputs the dtype of the "
            "model's weights (e.g. inputs.float())",
        )
    torch.export.save(program, dest)
    return dest


# operators that refuse integer tensors beside floating ones, which tracing does not check
# (the kernels refuse at run time, on the volunteer's machine, after the job is charged)
_SAME_DTYPE = frozenset({"linear", "mm", "addmm", "bmm", "baddbmm", "matmul"})


def _mixed_dtypes(program: Any) -> str:
    """Why an operator of the exported graph would refuse its tensors' dtypes, or ""."""
    torch = _torch()
    for node in program.graph.nodes:
        op = str(node.target).split(".")
        if node.op != "call_function" or len(op) < 2 or op[1] not in _SAME_DTYPE:
            continue
        values = [getattr(a, "meta", {}).get("val") for a in node.args]
        dtypes = list(dict.fromkeys(v.dtype for v in values if isinstance(v, torch.Tensor)))
        # floating dtypes that differ meet at the job's precision on the worker (bf16 and
        # fp16 cast the module and the floating inputs); an integer tensor never does
        if len({d.is_floating_point for d in dtypes}) > 1:
            names = " and ".join(str(d).removeprefix("torch.") for d in dtypes)
            return f"its {op[1]} would get tensors of {names}"
    return ""


def _shape_text(tensor: "torch.Tensor") -> str:
    return f"{str(tensor.dtype).removeprefix('torch.')}{list(tensor.shape)}"


@contextlib.contextmanager
def _quiet_tracer() -> Iterator[None]:
    """Keeps torch's own log of a failed trace (a traceback per failing operator) off the
    user's terminal: the error raised says what failed."""
    tracer = logging.getLogger("torch._subclasses.fake_tensor")
    was = tracer.disabled
    tracer.disabled = True
    try:
        yield
    finally:
        tracer.disabled = was


def _check_module(model: Any) -> None:
    if isinstance(model, Mapping):
        raise InvalidArgumentError(
            "MODEL_NOT_EXPORTED", f"the model is a dict (a state dict?), not a model: {EXPORT_HINT}"
        )
    if not isinstance(model, _torch().nn.Module):
        raise InvalidArgumentError(
            "BAD_MODEL",
            f"the model is a {type(model).__name__}: pass an nn.Module, or the path of a "
            "program saved with torch.export.save",
        )


def check_program(path: Path) -> ProgramInfo:
    try:
        return inspect_pt2(path)
    except NotExported as exc:
        raise InvalidArgumentError("MODEL_NOT_EXPORTED", f"{path}: {exc}") from None
    except UnsafeProgram as exc:
        raise InvalidArgumentError("UNSAFE_MODEL", str(exc)) from None


# --- inputs -----------------------------------------------------------------------------


def _named(batch: Any, names: list[str] | None, where: str) -> "dict[str, torch.Tensor]":
    torch = _torch()
    if isinstance(batch, torch.Tensor):
        batch = (batch,)
    if isinstance(batch, Mapping):
        tensors = dict(batch)
        if names is not None and set(tensors) != set(names):
            raise InvalidArgumentError(
                "BAD_INPUTS",
                f"{where}: inputs are named {sorted(tensors)}, the program's {names}: name "
                "the tensors (a file's tensors, a table's columns, a dict's keys) as the "
                "program names its inputs",
            )
    elif isinstance(batch, tuple | list):
        if names is not None and len(batch) != len(names):
            raise InvalidArgumentError(
                "BAD_INPUTS", f"{where}: {len(batch)} inputs given, the program takes {names}"
            )
        tensors = dict(zip(names or [f"input_{i}" for i in range(len(batch))], batch, strict=True))
    else:
        raise InvalidArgumentError(
            "BAD_INPUTS", f"{where}: expected a tensor, tuple or dict of tensors, got {type(batch)}"
        )
    for name, tensor in tensors.items():
        if not isinstance(tensor, torch.Tensor) or tensor.dim() == 0:
            raise InvalidArgumentError(
                "BAD_INPUTS", f"{where}: input {name!r} is not a tensor with a batch dimension"
            )
    return tensors


def _batches(inputs: Any) -> Iterator[Any]:
    """The inputs as a stream of batches (one batch when given whole)."""
    torch = _torch()
    if isinstance(inputs, str | os.PathLike):
        yield from inputfiles.batches(Path(inputs))
    elif isinstance(inputs, torch.Tensor | tuple | list | Mapping):
        yield inputs
    elif isinstance(inputs, Iterable):
        yield from inputs
    else:
        raise InvalidArgumentError("BAD_INPUTS", f"cannot take inputs of type {type(inputs)}")


def _shards(
    batches: Iterator["dict[str, torch.Tensor]"], samples_per_shard: int
) -> Iterator["dict[str, torch.Tensor]"]:
    cat = _torch().cat
    pending: list[dict[str, Any]] = []
    count = 0
    for batch in batches:
        pending.append(batch)
        count += next(iter(batch.values())).shape[0]
        while count >= samples_per_shard:
            merged = {k: cat([b[k] for b in pending]) for k in pending[0]}
            yield {k: v[:samples_per_shard] for k, v in merged.items()}
            rest = {k: v[samples_per_shard:] for k, v in merged.items()}
            count -= samples_per_shard
            pending = [rest] if count else []
    if count:
        yield {k: cat([b[k] for b in pending]) for k in pending[0]}


def encode_shard(tensors: "dict[str, torch.Tensor]") -> bytes:
    from safetensors.torch import save

    return save({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()})


def check_shard(program: ProgramInfo, data: bytes, batch_size: int, label: str) -> int:
    """The coordinator's submit check, run before upload: samples in the shard."""
    try:
        return check_shard_header(program, header_of(data, label), batch_size, label)
    except BadTensors as exc:
        raise InvalidArgumentError("BAD_INPUTS", str(exc)) from None


# --- submit -----------------------------------------------------------------------------


def check_options(
    precision: str, batch_size: int, min_vram_gb: float = 0, shard_batches: int | None = None
) -> None:
    if precision not in PRECISIONS:
        raise InvalidArgumentError("BAD_PARAMS", f"precision must be one of {list(PRECISIONS)}")
    if not 1 <= batch_size <= MAX_EXPORT_BATCH:
        raise InvalidArgumentError(
            "BAD_PARAMS", f"batch_size must be 1..{MAX_EXPORT_BATCH}, got {batch_size}"
        )
    if not 0 <= min_vram_gb < 2**33:  # also refuses NaN
        raise InvalidArgumentError(
            "BAD_PARAMS", f"min_vram_gb must be 0 (any) or more GiB, got {min_vram_gb}"
        )
    if shard_batches is not None and shard_batches < 1:
        raise InvalidArgumentError(
            "BAD_PARAMS", f"shard_batches must be at least 1, got {shard_batches}"
        )


class Plan:
    """An inference job's program (exported into `tmp` when given a module) and its input
    shards, each encoded and checked as `next_shard` makes it: one in memory at a time."""

    def __init__(
        self, model: Any, inputs: Any, batch_size: int, shard_batches: int | None, tmp: Path
    ) -> None:
        batches = _batches(inputs)
        first = next(batches, None)
        if first is None:
            held = f": {inputs} holds no samples" if isinstance(inputs, str | os.PathLike) else ""
            raise InvalidArgumentError("BAD_INPUTS", f"no inputs{held}")
        if isinstance(model, str | os.PathLike):
            self.program_path = Path(model)
            if not self.program_path.is_file():
                raise InvalidArgumentError(
                    "BAD_MODEL", f"model file {self.program_path} does not exist"
                )
        else:
            _check_module(model)
            example = tuple(_named(first, None, "inputs").values())
            self.program_path = export_program(
                model, tuple(t[:batch_size] for t in example), tmp / "model.pt2"
            )
        self.program = check_program(self.program_path)
        self.batch_size = batch_size
        names = [s.name for s in self.program.inputs]
        is_path = isinstance(inputs, str | os.PathLike)
        named = (
            _named(b, names, str(inputs) if is_path else f"batch {i}")
            for i, b in enumerate(_chain(first, batches))
        )
        samples = _shard_samples(first, batch_size, shard_batches)
        self._shards = enumerate(_shards(named, samples))

    def next_shard(self) -> tuple[str, bytes] | None:
        """The next shard's label and safetensors bytes, checked; None after the last."""
        item = next(self._shards, None)
        if item is None:
            return None
        label = f"shard_{item[0]:06d}"
        data = encode_shard(item[1])
        check_shard(self.program, data, self.batch_size, label)
        return label, data


def job_params(
    batch_size: int, precision: str, deterministic: bool, compile: bool
) -> dict[str, Any]:
    return {
        "batch_size": batch_size,
        "precision": precision,
        "deterministic": deterministic,
        "compile": compile,
    }


def job_requirements(device: str, min_vram_gb: float) -> Requirements:
    return Requirements(
        device_kind=DeviceKind(device) if device else DeviceKind.ANY,
        min_memory_bytes=int(min_vram_gb * 2**30),
    )


def _chain(first: Any, rest: Iterator[Any]) -> Iterator[Any]:
    yield first
    yield from rest


def _shard_samples(first: Any, batch_size: int, shard_batches: int | None) -> int:
    if shard_batches is not None:
        return batch_size * max(1, shard_batches)  # checked in check_options
    tensors = _named(first, None, "inputs").values()
    per_sample = sum(t[:1].numel() * t.element_size() for t in tensors)
    fits = SHARD_BYTES // max(1, per_sample * batch_size)
    return batch_size * max(1, min(SHARD_BATCHES, fits))


# --- outputs ----------------------------------------------------------------------------


def decode(result: TaskResult) -> ShardOutput:
    """A finished task's outputs, rebuilt into the program's output structure."""
    return decode_outputs(
        result.index, result.output("meta.json"), result.output("outputs.safetensors")
    )


def decode_outputs(index: int, meta_json: bytes, safetensors: bytes) -> ShardOutput:
    from safetensors.torch import load
    from torch.utils import _pytree as pytree

    meta = json.loads(meta_json)
    tensors = load(safetensors)
    leaves = [tensors[name] for name in meta["outputs"]]
    outputs = pytree.tree_unflatten(leaves, pytree.treespec_loads(meta["treespec"]))
    return ShardOutput(index, outputs, dict(meta.get("nonfinite", {})), meta)


def split_batches(outputs: Any, batch_size: int) -> Iterator[Any]:
    from torch.utils import _pytree as pytree

    leaves, spec = pytree.tree_flatten(outputs)
    samples = leaves[0].shape[0] if leaves else 0
    for start in range(0, samples, batch_size):
        yield pytree.tree_unflatten([t[start : start + batch_size] for t in leaves], spec)


def concat(parts: list[Any]) -> Any:
    torch = _torch()
    from torch.utils import _pytree as pytree

    flat = [pytree.tree_flatten(p) for p in parts]
    spec = flat[0][1]
    return pytree.tree_unflatten(
        [torch.cat(ts) for ts in zip(*(f[0] for f in flat), strict=True)], spec
    )
