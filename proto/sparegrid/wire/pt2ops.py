"""Which operators a client's `torch.export` program may name, decided from the name alone.

A program runs on a volunteer's device right after another client's task, so no operator
may hand it memory it did not write (what the last task left there), reach files, or view
memory outside a tensor's storage. The allowed namespaces are `aten` and `prims`; within
them these are refused:

- files, the process's output and settings: `from_file`, `save`, `_print` (stdout is the
  pipe the executor child talks to its daemon on), the FFT plan cache's settings;
- uninitialised memory: every `empty` allocation that the worker does not rewrite into a
  zeroed one (`ZEROED_BY_WORKER`), the quantized empty constructors, `_make_dep_token` (an
  uninitialised scalar, found by running it on poisoned memory), `resize`/`resize_as`
  (they grow a storage without writing it), `set_` (it re-points a tensor at a storage
  and grows it), and every `out=` overload (it resizes the tensor it is given, then may
  leave part of it unwritten);
- views that do not check their bounds (`_reshape_alias` reads past the storage);
- whole families an inference program does not need and whose kernels trust their
  arguments or return scratch buffers: sparse, nested and quantized tensors, mkldnn,
  cuDNN/MIOpen internals (their reserve spaces are uninitialised), fbgemm, MPS, and
  backward operators.

`tests/inference/test_pt2_operators.py` walks every operator torch registers and fails
when one that could return uninitialised memory is admitted, so a new torch release
cannot slip one in unnoticed.
"""

import re

ALLOWED_NAMESPACES = ("torch.ops.aten.", "torch.ops.prims.")
# The worker rewrites these to zeroed allocations (executors/inference/loader.py); every
# other overload of an `empty` operator is refused.
ZEROED_BY_WORKER = frozenset(
    {
        "torch.ops.aten.empty.memory_format",
        "torch.ops.aten.empty_like.default",
        "torch.ops.aten.new_empty.default",
        "torch.ops.aten.empty_permuted.default",
    }
)
_DENIED_OPS = {
    "from_file": "reads a file (no file access)",
    "save": "writes a file (no file access)",
    "_print": "writes to the executor's output pipe",
    "empty_strided": "hands out uninitialised memory",
    "new_empty_strided": "hands out uninitialised memory",
    "empty_quantized": "hands out uninitialised memory",
    "_empty_affine_quantized": "hands out uninitialised memory",
    "_empty_per_channel_affine_quantized": "hands out uninitialised memory",
    "resize": "grows a storage without writing it",
    "resize_": "grows a storage without writing it",
    "resize_as": "grows a storage without writing it",
    "resize_as_": "grows a storage without writing it",
    "_resize_output": "grows a storage without writing it",
    "_resize_output_": "grows a storage without writing it",
    "_copy_from_and_resize": "grows a storage without writing it",
    "set": "re-points a tensor at a storage and grows it unwritten",
    "set_": "re-points a tensor at a storage and grows it unwritten",
    "set_data": "re-points a tensor at another's data",
    "_reshape_alias": "views memory past its storage (no bounds check)",
    "_reshape_alias_copy": "views memory past its storage (no bounds check)",
    "_make_dep_token": "hands out an uninitialised scalar",
    "_efficientzerotensor": "makes a tensor with no memory behind it",
    "record_stream": "changes when the allocator reuses memory",
}
# prefixes of process-wide settings (the FFT plan cache): a task must not change them
_DENIED_PREFIXES = ("_cufft_",)
_DENIED_FAMILIES = re.compile(
    r"sparse|_csr|_csc|_bsr|_bsc|_coo|nested|jagged|quantiz|int4pack|int8pack|mkldnn"
    r"|cudnn|miopen|fbgemm|_mps|mps_|_cslt|backward|^empty|_empty|^new_empty"
)
_FAMILY_REASONS = (
    ("backward", "is a backward (training) operator"),
    ("empty", "hands out uninitialised memory"),
)
# out= overloads not named "out", "*_out" or "out*" (sort.values, max.dim_max, ...)
_OUT_OVERLOADS = frozenset(
    {"grad_input", "output", "values", "values_stable", "dim_values", "dim_max", "dim_min"}
    | {"result", "eigenvalues", "eigvals", "inverse", "sign", "a", "L", "Q", "U", "X"}
)


def refused_operator(target: str) -> str | None:
    """Why the graph node target `target` ("torch.ops.aten.add.Tensor") is refused, or
    None when it is allowed. Size arithmetic helpers are judged by the caller."""
    if not target.startswith(ALLOWED_NAMESPACES):
        return "is not an aten or prims operator (aten/prims only)"
    parts = target.split(".")
    if len(parts) != 5 or not all(p.isidentifier() for p in parts):
        return "is not an operator name (aten/prims only)"
    name, overload = parts[3], parts[4]
    if target in ZEROED_BY_WORKER:
        return None
    if name in _DENIED_OPS:
        return _DENIED_OPS[name]
    if name.startswith(_DENIED_PREFIXES):
        return "changes process-wide settings that other tasks share"
    if _is_out_overload(overload):
        return "is an out= overload (it resizes the tensor it writes, unwritten)"
    if _DENIED_FAMILIES.search(name):
        for word, reason in _FAMILY_REASONS:
            if word in name:
                return reason
        return "belongs to a family of internal operators that trust their arguments"
    return None


def _is_out_overload(overload: str) -> bool:
    return (
        overload == "out"
        or overload.endswith("_out")
        or overload.lower().startswith("out")
        or overload in _OUT_OVERLOADS
    )
