"""The inference executor: runs a checked .pt2 program over one shard of safetensors inputs.

It lives in the device's long-lived child process, so what it keeps between tasks stays
hot: programs, by archive and precision, in a cache bounded in bytes (least recently used
evicted), and the next shard's inputs, read and pinned on a background thread while the
current shard computes (`prepare`, called by the child for the task that comes next).

Outputs: "outputs.safetensors" (the program's outputs, flattened in order, samples along
the first dimension) and "meta.json" (precision, device, non-finite counts, the output
structure, timings). Both are digested and signed with the result.
"""

import gc
import json
import os
import time
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

# cuBLAS reads this when it starts; deterministic mode needs it (harmless otherwise).
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import torch
from safetensors.torch import load_file, save
from torch.utils import _pytree as pytree

from sparegrid.wire.codes import FailureCode
from sparegrid.wire.pt2 import ProgramInfo
from sparegrid.wire.pt2zip import UnsafeProgram
from sparegrid.worker.executors.base import (
    BAD_INPUT,
    BAD_PARAMS,
    ExecOutput,
    ExecTask,
    ExecutorError,
)
from sparegrid.worker.executors.inference.loader import (
    PRECISION_DTYPES,
    cast_module,
    load_program,
)
from sparegrid.worker.executors.params import get_int, load_params

CUDA_OOM = FailureCode.OUT_OF_MEMORY.value  # a plain str: it crosses the child boundary
PARAMS = ("batch_size", "precision", "deterministic", "compile", "shard", "samples")
DEFAULT_CACHE_BYTES = 8 << 30


@dataclass
class Loaded:
    module: Any
    info: ProgramInfo
    nbytes: int


class ModelCache:
    """Loaded programs by key, at most `max_bytes` of parameters, least recently used out."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[str, str], Loaded] = OrderedDict()

    def get(self, key: tuple[str, str]) -> Loaded | None:
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
        return entry

    def put(self, key: tuple[str, str], entry: Loaded) -> None:
        self._entries[key] = entry
        self._entries.move_to_end(key)
        while len(self._entries) > 1 and self.used() > self.max_bytes:
            self._entries.popitem(last=False)

    def used(self) -> int:
        return sum(e.nbytes for e in self._entries.values())

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


class InferenceExecutor:
    name: ClassVar[str] = "inference"
    version: ClassVar[str] = "1.0"

    def __init__(self) -> None:
        cache_bytes = int(os.environ.get("SPAREGRID_MODEL_CACHE_BYTES", DEFAULT_CACHE_BYTES))
        self.models = ModelCache(cache_bytes)
        self._stager = ThreadPoolExecutor(1, thread_name_prefix="stage")
        self._staged: dict[Path, Future[dict[str, torch.Tensor]]] = {}
        # the volunteer's --max-vram, passed down by the worker's runner
        self._vram_share = float(os.environ.get("SPAREGRID_MAX_VRAM_FRACTION", "1") or 1)
        self._capped: set[torch.device] = set()

    # --- staging ---------------------------------------------------------------------

    def prepare(self, task: ExecTask) -> None:
        """Reads (and pins, for a GPU) the shard of a task that will run next."""
        shard = _shard_path(task)
        if shard is not None and shard not in self._staged:
            pin = task.device.kind == "cuda"
            self._staged[shard] = self._stager.submit(_read_shard, shard, pin)

    def _take_inputs(self, shard: Path, pin: bool) -> tuple[dict[str, torch.Tensor], bool]:
        future = self._staged.pop(shard, None)
        for stale in list(self._staged)[:-2]:  # tasks that went elsewhere
            self._staged.pop(stale).cancel()
        if future is not None:
            try:
                return future.result(), True
            except Exception:  # read again below, and report that error
                pass
        return _read_shard(shard, pin), False

    # --- running ---------------------------------------------------------------------

    def run(self, task: ExecTask) -> list[ExecOutput]:
        params = load_params(task.params, self.name, PARAMS)
        batch_size = get_int(params, "batch_size", self.name, low=1, high=1 << 16, default=None)
        precision = params.get("precision", "fp32")
        if precision not in ("fp32", "tf32", *PRECISION_DTYPES):
            raise ExecutorError(BAD_PARAMS, f"unknown precision {precision!r}")
        deterministic = bool(params.get("deterministic", False))
        compiled = bool(params.get("compile", False))
        shard = _shard_path(task)
        if "model" not in task.inputs or shard is None:
            raise ExecutorError(BAD_INPUT, "inference takes 'model' and one 'shard_NNNNNN'")
        device = _device(task)
        if device.type == "cuda" and device not in self._capped and self._vram_share < 1:
            torch.cuda.set_per_process_memory_fraction(self._vram_share, device)
            self._capped.add(device)
        _set_numerics(precision, deterministic)
        started = time.perf_counter()
        loaded = self._model(task.inputs["model"], device, precision, compiled, task.workdir)
        load_ms = (time.perf_counter() - started) * 1000
        inputs, staged = self._take_inputs(shard, device.type == "cuda")
        args = _arguments(loaded.info, inputs, device, precision)
        start_ns = time.time_ns()
        leaves, spec, used_batch = self._forward_shard(loaded, args, batch_size, device)
        end_ns = time.time_ns()
        outputs = {f"output_{i}": t.contiguous() for i, t in enumerate(leaves)}
        meta = {
            "precision": precision,
            "deterministic": deterministic,
            "compiled": compiled,
            "device": _device_name(device),
            "torch": torch.__version__,
            "samples": int(args[0].shape[0]),
            "batch_size": used_batch,
            "outputs": list(outputs),
            "treespec": pytree.treespec_dumps(spec),
            "nonfinite": _nonfinite(outputs),
            "timing": {
                "load_ms": round(load_ms, 3),
                "start_ns": start_ns,
                "end_ns": end_ns,
                "staged": staged,
            },
        }
        return [
            ExecOutput("outputs.safetensors", save(outputs)),
            ExecOutput("meta.json", json.dumps(meta, sort_keys=True).encode()),
        ]

    def _model(
        self, path: Path, device: torch.device, precision: str, compiled: bool, scratch: Path
    ) -> Loaded:
        key = (path.name, f"{device}/{precision}" + ("/compiled" if compiled else ""))
        cached = self.models.get(key)
        if cached is not None:
            return cached
        try:
            module, info = self._load(path, device, scratch)
        except torch.OutOfMemoryError:
            self._free(device, drop_models=True)
            try:
                module, info = self._load(path, device, scratch)
            except torch.OutOfMemoryError:
                self._free(device, drop_models=True)
                raise _oom(device, "loading the model") from None
        module = cast_module(module, precision)
        nbytes = sum(t.numel() * t.element_size() for t in module.state_dict().values())
        if compiled:
            module = _compile(module, device, scratch)
        entry = Loaded(module, info, nbytes)
        self.models.put(key, entry)
        return entry

    def _load(self, path: Path, device: torch.device, scratch: Path) -> tuple[Any, ProgramInfo]:
        try:
            return load_program(path, device, scratch)
        except UnsafeProgram as exc:
            raise ExecutorError(BAD_INPUT, str(exc)) from None

    def _forward_shard(
        self, loaded: Loaded, args: list[torch.Tensor], batch_size: int, device: torch.device
    ) -> tuple[list[torch.Tensor], Any, int]:
        """Runs the shard in batches; on out-of-memory, halves the batch and starts over."""
        while True:
            try:
                leaves, spec = self._batches(loaded.module, args, batch_size)
                return leaves, spec, batch_size
            except torch.OutOfMemoryError:
                self._free(device, drop_models=False)
                if batch_size == 1:
                    raise _oom(device, "a batch of one sample") from None
                batch_size = max(1, batch_size // 2)

    def _batches(
        self, module: Any, args: list[torch.Tensor], batch_size: int
    ) -> tuple[list[torch.Tensor], Any]:
        samples = args[0].shape[0]
        chunks: list[list[torch.Tensor]] = []
        spec = None
        with torch.inference_mode():
            for start in range(0, samples, batch_size):
                out = self.forward(module, [a[start : start + batch_size] for a in args])
                leaves, spec = pytree.tree_flatten(out)
                chunks.append([leaf.to("cpu", non_blocking=True) for leaf in leaves])
            if args[0].is_cuda:
                torch.cuda.synchronize(args[0].device)
        merged = [torch.cat(parts) for parts in zip(*chunks, strict=True)]
        return merged, spec

    def forward(self, module: Any, batch: list[torch.Tensor]) -> Any:
        """One batch through the program (a seam for fault-injection tests)."""
        return module(*batch)

    def _free(self, device: torch.device, drop_models: bool) -> None:
        if drop_models:
            self.models.clear()
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()


def _compile(module: Any, device: torch.device, scratch: Path) -> Any:
    """Inductor, cached on disk beside the scratch directory: the slow compile of a model
    (a minute for a ViT-B on an H200) is paid once per node, not once per process."""
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(scratch.parent / "inductor"))
    mode = "max-autotune-no-cudagraphs" if device.type == "cuda" else "default"
    return torch.compile(module, mode=mode)


def _shard_path(task: ExecTask) -> Path | None:
    shards = [p for name, p in task.inputs.items() if name.startswith("shard_")]
    return shards[0] if len(shards) == 1 else None


def _read_shard(path: Path, pin: bool) -> dict[str, torch.Tensor]:
    try:
        tensors = load_file(str(path))
    except Exception as exc:
        raise ExecutorError(BAD_INPUT, f"input shard is not valid safetensors: {exc}") from None
    if pin:
        tensors = {k: v.pin_memory() for k, v in tensors.items()}
    return tensors


def _device(task: ExecTask) -> torch.device:
    if task.device.kind == "cuda":
        if not torch.cuda.is_available():
            raise ExecutorError("NO_CUDA", "this node's GPU is not usable by torch", True)
        return torch.device("cuda", 0)  # the child sees only its own GPU
    return torch.device("cpu")


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def _set_numerics(precision: str, deterministic: bool) -> None:
    tf32 = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.set_float32_matmul_precision("high" if tf32 else "highest")
    torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic


def _arguments(
    info: ProgramInfo, inputs: dict[str, torch.Tensor], device: torch.device, precision: str
) -> list[torch.Tensor]:
    names = [s.name for s in info.inputs]
    if set(inputs) != set(names):
        raise ExecutorError(BAD_INPUT, f"shard holds {sorted(inputs)}, the program takes {names}")
    dtype = PRECISION_DTYPES.get(precision)
    args = []
    for name in names:
        tensor = inputs[name].to(device, non_blocking=True)
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        args.append(tensor)
    return args


def _nonfinite(outputs: dict[str, torch.Tensor]) -> dict[str, int]:
    counts = {}
    for name, tensor in outputs.items():
        if tensor.is_floating_point():
            bad = int((~torch.isfinite(tensor)).sum())
            if bad:
                counts[name] = bad
    return counts


def _oom(device: torch.device, what: str) -> ExecutorError:
    detail = ""
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        detail = f" ({free / 2**30:.1f} of {total / 2**30:.1f} GiB free)"
    return ExecutorError(
        CUDA_OOM, f"out of memory on {_device_name(device)}{detail} running {what}", True
    )
