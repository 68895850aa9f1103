"""Loads a client's .pt2 program without running any of the client's code, on any device.

1. `check_archive` checks the archive against the allow-list (sparegrid.wire.pt2).
2. A fresh archive is written from what was checked: the JSON documents and markers
   from the very bytes that were parsed, the raw tensor payloads copied from the entries
   whose sizes were checked, each name once, and the pickled sample inputs replaced by
   nothing, so no path inside `torch.export.load` reaches an unpickler, and torch's zip
   reader cannot pick another copy of an entry than the one checked.
3. While torch loads that copy, `torch.load` without `weights_only=True` and
   `pickle.loads` raise: a second fence, should a future torch add a pickle path.
4. The program is moved to the device and made portable: every `aten.view` becomes
   `aten.reshape`, and every `empty` allocation a zeroed one (`ZEROED_BY_WORKER`), so
   a program cannot read what the previous task (another client's) left in the device's
   memory. A program traced on the CPU records views that were legal for the CPU
   kernels' output strides; CUDA kernels (e.g. attention) return other strides and the
   same view fails ("view size is not compatible with input tensor's size and stride").
   `reshape` is a view where the strides allow and a copy where not, and an inference
   graph never writes through the alias. CPU-only attention kernels that a decomposed
   program may name are swapped for the portable `scaled_dot_product_attention`.
5. The graph torch built is checked once more, now with each operator's schema: no
   operator the allow-list refuses, no `empty` left unzeroed, no out= argument.
"""

import contextlib
import functools
import importlib
import operator
import pickle
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch.export.passes import move_to_device_pass

from sparegrid.wire.pt2 import ALLOWED_HELPERS, CheckedArchive, ProgramInfo, check_archive
from sparegrid.wire.pt2ops import refused_operator
from sparegrid.wire.pt2zip import UnsafeProgram, open_archive

PRECISION_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
_CPU_ATTENTION = "_scaled_dot_product_flash_attention_for_cpu"


def zeroed_permuted(size: Any, physical_layout: Any, **kwargs: Any) -> torch.Tensor:
    """`empty_permuted` (the layout a decomposed `empty_like` keeps), zero-filled."""
    out: torch.Tensor = torch.ops.aten.empty_permuted.default(size, physical_layout, **kwargs)
    return out.zero_()


# Uninitialised memory may hold what the previous task (another client's) left on the
# device: allocations in a client's graph are zeroed instead. Keys: ZEROED_BY_WORKER.
_ZEROED: dict[Any, Any] = {
    torch.ops.aten.empty.memory_format: torch.ops.aten.zeros.default,
    torch.ops.aten.new_empty.default: torch.ops.aten.new_zeros.default,
    torch.ops.aten.empty_like.default: torch.ops.aten.zeros_like.default,
    torch.ops.aten.empty_permuted.default: zeroed_permuted,
}
_OWN_TARGETS = frozenset(_ZEROED.values())
# Fused attention kernels return scratch beside their output: log-sum-exp padding, debug
# masks, and random seeds that flash attention leaves uninitialised when there is no
# dropout. A program may use their first output only.
_FIRST_OUTPUT_ONLY = frozenset(
    {
        "_scaled_dot_product_flash_attention",
        "_scaled_dot_product_flash_attention_for_cpu",
        "_scaled_dot_product_efficient_attention",
        "_scaled_dot_product_fused_attention_overrideable",
        "_flash_attention_forward",
        "_efficient_attention_forward",
    }
)


class UnpicklingRefused(RuntimeError):
    pass


def sanitized_copy(archive: zipfile.ZipFile, checked: CheckedArchive, dest: Path) -> Path:
    """A fresh archive holding what `check_archive` passed, each entry once: the checked
    bytes of the JSON documents and markers, the size-checked payloads, and the pickled
    sample inputs left empty."""
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_STORED) as out:
        for name, data in checked.checked.items():
            out.writestr(name, data)
        for name in checked.dropped:
            out.writestr(name, b"")
        for entry in checked.payloads:
            _copy_entry(archive, entry, out)
    return dest


def _copy_entry(archive: zipfile.ZipFile, entry: zipfile.ZipInfo, out: zipfile.ZipFile) -> None:
    copied = 0
    try:
        with archive.open(entry) as fin, out.open(entry.filename, "w", force_zip64=True) as fout:
            while chunk := fin.read(1 << 22):
                copied += len(chunk)
                fout.write(chunk)
    except (zipfile.BadZipFile, EOFError, zlib.error) as exc:
        raise UnsafeProgram(entry.filename, f"cannot be read: {exc}") from None
    if copied != entry.file_size:  # zipfile checks the CRC too; this is the size it declared
        raise UnsafeProgram(entry.filename, "holds more or fewer bytes than it declares")


@contextlib.contextmanager
def no_unpickling() -> Iterator[None]:
    real_load, real_loads = torch.load, pickle.loads

    def guarded_load(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("weights_only") is not True:
            raise UnpicklingRefused("torch.load without weights_only=True during model load")
        return real_load(*args, **kwargs)

    def refused_loads(*args: Any, **kwargs: Any) -> Any:
        raise UnpicklingRefused("pickle.loads during model load")

    torch.load = guarded_load
    pickle.loads = refused_loads
    try:
        yield
    finally:
        torch.load = real_load
        pickle.loads = real_loads


def load_program(path: Path, device: torch.device, scratch: Path) -> tuple[Any, ProgramInfo]:
    """(module, info): the program as a callable module on `device`, and its signature."""
    clean = scratch / "program.pt2"
    try:
        with open_archive(path) as archive:
            checked = check_archive(archive, path.stat().st_size)
            sanitized_copy(archive, checked, clean)
    except OSError as exc:
        clean.unlink(missing_ok=True)
        raise UnsafeProgram(path.name, f"not a .pt2 (zip) archive: {exc}") from None
    except BaseException:
        clean.unlink(missing_ok=True)
        raise
    try:
        with no_unpickling():
            program = torch.export.load(clean)
    finally:
        clean.unlink(missing_ok=True)
    if device.type != "cpu":
        program = move_to_device_pass(program, device)
    module = program.module()
    make_portable(module.graph)
    check_loaded(module.graph, checked.info)
    module.recompile()
    return module, checked.info


def check_loaded(graph: torch.fx.Graph, info: ProgramInfo) -> None:
    """The allow-list again, on the graph torch built, with each operator's schema: no
    refused operator, no allocation left unzeroed, no out= argument."""
    entry = f"{info.root}/models/{info.model}.json"
    for node in graph.nodes:
        target = node.target
        if node.op != "call_function" or target in _OWN_TARGETS:
            continue
        if not isinstance(target, torch._ops.OpOverload):
            if target in _helpers():
                continue  # size arithmetic, the same names the archive was checked for
            raise UnsafeProgram(entry, f"the loaded graph calls {target!r}")
        name = f"torch.ops.{target.namespace}.{target._opname}.{target._overloadname}"
        why = refused_operator(name) if target not in _ZEROED else "was not zeroed"
        if why is None and any(a.is_out for a in target._schema.arguments):
            why = "writes into a tensor it is given (out=)"
        if why is None and target._opname in _FIRST_OUTPUT_ONLY and not _first_only(node):
            why = "returns scratch memory beside its output, and the program reads it"
        if why is not None:
            raise UnsafeProgram(entry, f"operator {name!r} is refused: it {why}")


@functools.cache
def _helpers() -> frozenset[Any]:
    """The callables `ALLOWED_HELPERS` names ("_operator.add", "torch.sym_int", ...)."""
    found = set()
    for name in ALLOWED_HELPERS:
        module, _, attr = name.rpartition(".")
        found.add(getattr(importlib.import_module(module), attr))
    return frozenset(found)


def _first_only(node: torch.fx.Node) -> bool:
    return all(u.target is operator.getitem and u.args[1] == 0 for u in node.users)


def make_portable(graph: torch.fx.Graph) -> int:
    """Rewrites layout-dependent operators in place; returns how many were changed."""
    changed = 0
    for node in list(graph.nodes):
        if node.op != "call_function":
            continue
        if node.target is torch.ops.aten.view.default:
            node.target = torch.ops.aten.reshape.default
            changed += 1
        elif node.target in _ZEROED:
            node.target = _ZEROED[node.target]
            if node.target is torch.ops.aten.zeros.default:  # takes no memory_format
                node.kwargs = {k: v for k, v in node.kwargs.items() if k != "memory_format"}
            changed += 1
        elif getattr(node.target, "__name__", "").startswith(_CPU_ATTENTION):
            changed += _portable_attention(graph, node)
    return changed


def _portable_attention(graph: torch.fx.Graph, node: torch.fx.Node) -> int:
    """`_scaled_dot_product_flash_attention_for_cpu(q, k, v, dropout, causal, mask=, scale=)`
    returns (out, logsumexp); when only `out` is used it is plain SDPA on any device."""
    users = list(node.users)
    if not all(u.target is operator.getitem and u.args[1] == 0 for u in users):
        return 0  # logsumexp is used: leave it, it will say so if the device lacks it
    q, k, v, *rest = node.args
    dropout = rest[0] if len(rest) > 0 else 0.0
    causal = rest[1] if len(rest) > 1 else False
    with graph.inserting_before(node):
        sdpa = graph.call_function(
            torch.ops.aten.scaled_dot_product_attention.default,
            (q, k, v, node.kwargs.get("attn_mask"), dropout, causal),
            {"scale": node.kwargs.get("scale")},
        )
    for user in users:
        user.replace_all_uses_with(sdpa)
        graph.erase_node(user)
    graph.erase_node(node)
    return 1


def cast_module(module: Any, precision: str) -> Any:
    dtype = PRECISION_DTYPES.get(precision)
    return module.to(dtype) if dtype is not None else module
