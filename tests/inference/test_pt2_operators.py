"""No operator a client's program may name hands it memory it did not write, or files.

The registries below are this test's own, kept apart from `sparegrid.wire.pt2ops` on
purpose: removing an entry there must fail a test here. Every operator torch registers is
walked, so a torch upgrade that adds one of a suspicious kind fails until it is reviewed.
"""

import json
import operator
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from sparegrid.wire.pt2 import ProgramInfo, inspect_pt2
from sparegrid.wire.pt2ops import ZEROED_BY_WORKER, refused_operator
from sparegrid.wire.pt2zip import UnsafeProgram
from sparegrid.worker.executors.inference import loader
from tests.inference.models import export, read, rewrite

SENTINEL = 0x5A5A5A5A
# Operators that return memory nobody wrote (found by reading their kernels, or by
# running them on poisoned memory below), read or write files, or view past a storage.
UNINITIALISED = (
    "aten.empty",
    "aten.empty_like",
    "aten.new_empty",
    "aten.empty_permuted",
    "aten.empty_strided",
    "aten.new_empty_strided",
    "aten.empty_quantized",
    "aten._empty_affine_quantized",
    "aten._empty_per_channel_affine_quantized",
    "aten._make_dep_token",
    "aten.resize",
    "aten.resize_",
    "aten.resize_as",
    "aten.resize_as_",
    "aten._resize_output",
    "aten._resize_output_",
    "aten._copy_from_and_resize",
    "aten.set",
    "aten.set_",
    "aten.set_data",
    "aten.sparse_resize_",
    "aten._sparse_coo_tensor_with_dims_and_tensors",
    "aten._sparse_coo_tensor_unsafe",
    "aten.cudnn_batch_norm",
    "aten._cudnn_rnn",
    "aten.miopen_batch_norm",
    "prims.empty",
    "prims.empty_strided",
    "prims.empty_permuted",
    "prims.resize",
)
FILES_AND_VIEWS = (
    "aten.from_file",
    "aten.save",
    "aten._print",
    "aten._reshape_alias",
    "aten._reshape_alias_copy",
    "aten._cufft_set_plan_cache_max_size",
)
# Admitted operators whose name looks like one of the above, read and judged safe.
REVIEWED = {
    "alias": "a view of the same storage, same bounds",
    "alias_copy": "a copy",
    "as_strided": "bounds-checked against the storage (setStorage)",
    "as_strided_": "bounds-checked against the storage",
    "as_strided_copy": "bounds-checked against the storage",
    "as_strided_scatter": "bounds-checked against the storage",
    "copy_strided": "a copy with given strides, every element written",
    "_unsafe_view": "checks the element count",
    "_unsafe_index": "index bounds checked by the kernel",
    "_unsafe_index_put": "index bounds checked by the kernel",
    "_unsafe_masked_index": "index bounds checked by the kernel",
    "_unsafe_masked_index_put_accumulate": "index bounds checked by the kernel",
    "unsafe_chunk": "split without view tracking; bounds as split",
    "unsafe_split": "split without view tracking; bounds as split",
    "unsafe_split_with_sizes": "split without view tracking; bounds as split",
    "storage_offset": "an integer",
    "sym_storage_offset": "an integer",
    "_has_same_storage_numel": "a boolean",
    "is_set_to": "a boolean",
    "is_pinned": "a boolean",
    "pin_memory": "a pinned copy",
    "_pin_memory": "a pinned copy",
    "_make_token": "an empty token tensor (prims), size 0",
    "_sink_tokens": "consumes tokens",
    "zero_": "writes every element",
    "new_zeros": "zeroed",
    "zeros_like": "zeroed",
}
SUSPECT = re.compile(
    r"empty|resize|^set|set_|alias|strided|storage|unsafe|token|pin_memory|pinned|print|file|save"
)
# Factories (no tensor argument) that cannot run on a CPU-only torch or need arguments
# this test cannot make up; each was read instead of run.
NOT_RUN = {
    "torch.ops.aten.get_gradients.default": "distributed autograd only",
    "torch.ops.prims.iota.default": "integer dtypes only; writes start + i * step everywhere",
    "torch.ops.prims.scalar_tensor.default": "a full of one element",
}


def _overloads() -> Iterator[tuple[str, Any]]:
    for full in sorted(torch._C._dispatch_get_all_op_names()):
        if full.startswith(("aten::", "prims::")):
            ns, rest = full.split("::")
            name, _, overload = rest.partition(".")
            overload = overload or "default"
            op = getattr(getattr(getattr(torch.ops, ns), name), overload)
            yield f"torch.ops.{ns}.{name}.{overload}", op


ALL = dict(_overloads())


def _targets_of(packets: tuple[str, ...]) -> list[str]:
    out = []
    for packet in packets:
        found = [t for t in ALL if t.startswith(f"torch.ops.{packet}.")]
        out += found or [f"torch.ops.{packet}.default"]  # e.g. save: gone from torch, kept out
    return out


def _program_calling(source: Path, dest: Path, target: str) -> Path:
    program = json.loads(read(source, "models/model.json"))
    program["graph_module"]["graph"]["nodes"][0]["target"] = target
    return rewrite(source, dest, {"models/model.json": json.dumps(program).encode()}, {})


@pytest.mark.parametrize("target", _targets_of(UNINITIALISED + FILES_AND_VIEWS))
def test_every_denied_operator_is_refused_in_a_real_program(
    encoder_pt2: Path, tmp_path: Path, target: str
) -> None:
    bad = _program_calling(encoder_pt2, tmp_path / "bad.pt2", target)
    if target in ZEROED_BY_WORKER:
        inspect_pt2(bad)  # admitted: the worker zeroes it (next tests)
        return
    with pytest.raises(UnsafeProgram, match=re.escape(target)):
        inspect_pt2(bad)


def test_the_worker_zeroes_exactly_the_allocations_the_allow_list_lets_through() -> None:
    zeroed = {f"torch.ops.{op.namespace}.{op._opname}.{op._overloadname}" for op in loader._ZEROED}
    assert zeroed == ZEROED_BY_WORKER


def test_every_registered_operator_is_refused_or_reviewed() -> None:
    admitted = {t: op for t, op in ALL.items() if refused_operator(t) is None}
    assert len(admitted) > 1000, "the walk found too few operators to mean anything"
    writes_out = [t for t, op in admitted.items() if any(a.is_out for a in op._schema.arguments)]
    assert writes_out == [], "out= overloads resize the tensor they are given, unwritten"
    unreviewed = [
        t
        for t in admitted
        if SUSPECT.search(t.split(".")[3])
        and t.split(".")[3] not in REVIEWED
        and t not in ZEROED_BY_WORKER
    ]
    assert unreviewed == [], "review these, then refuse them in pt2ops or list them above"


def _arguments(schema: Any) -> dict[str, Any] | None:
    by_name = {"physical_layout": [0], "stride": [1], "low": 0, "start": 0, "step": 1}
    by_type = {
        "List[int]": [1000],
        "int": 1000,
        "float": 1000.0,
        "number": 1000,
        "ScalarType": torch.float32,
        "Device": torch.device("cpu"),
        "bool": False,
    }
    args: dict[str, Any] = {}
    for a in schema.arguments:
        kind = str(a.real_type)
        if a.has_default_value():
            continue
        if a.name in by_name:
            args[a.name] = by_name[a.name]
        elif kind in by_type:
            args[a.name] = by_type[kind]
        elif kind.startswith("Optional"):
            args[a.name] = None
        else:
            return None
    return args


def _as_the_worker_runs_it(op: Any, kwargs: dict[str, Any]) -> torch.fx.GraphModule:
    graph = torch.fx.Graph()
    graph.output(graph.call_function(op, (), kwargs))
    module = torch.fx.GraphModule(nn.Module(), graph)
    loader.make_portable(module.graph)
    module.recompile()
    return module


def _poisoned_result(module: Any) -> bool:
    for _ in range(3):  # free 4000 poisoned bytes, then allocate as many
        poison = torch.full((1000,), SENTINEL, dtype=torch.int32)
        del poison
        out = module()
        for t in out if isinstance(out, (tuple, list)) else [out]:
            raw = t.contiguous().view(-1).view(torch.uint8) if isinstance(t, torch.Tensor) else None
            if (
                raw is not None
                and raw.numel() % 4 == 0
                and (raw.view(torch.int32) == SENTINEL).any()
            ):
                return True
    return False


def test_admitted_factories_return_no_memory_they_did_not_write() -> None:
    """Every admitted operator that takes no tensor is run as the worker would run it, on
    memory just freed with a pattern in it: none may hand the pattern back."""
    control = _as_the_worker_runs_it(torch.ops.aten.empty_strided.default, _empty_args())
    if not _poisoned_result(control):
        pytest.skip("this allocator did not reuse freed memory; the probe cannot see leaks")
    leaks, unrun = [], []
    for target, op in ALL.items():
        schema = op._schema
        takes_tensor = any("Tensor" in str(a.type) for a in schema.arguments)
        gives_tensor = any("Tensor" in str(r.type) for r in schema.returns)
        if takes_tensor or not gives_tensor or refused_operator(target) is not None:
            continue
        args = _arguments(schema)
        try:
            module = _as_the_worker_runs_it(op, args or {})
            if args is None:
                raise TypeError("no arguments could be made up")
            if _poisoned_result(module):
                leaks.append(target)
        except (RuntimeError, TypeError, NotImplementedError):
            unrun.append(target)
    assert leaks == []
    assert set(unrun) <= set(NOT_RUN), "run these some other way, or refuse them"


def _empty_args() -> dict[str, Any]:
    return {"size": [1000], "stride": [1], "dtype": torch.int32}


class EmptyPermuted(nn.Module):
    """Returns an allocation it never writes: what a decomposed `empty_like` becomes."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = torch.ops.aten.empty_permuted.default([x.shape[0], 1000], [0, 1])
        return out.view(torch.int32)


def test_a_real_program_reading_its_empty_allocation_gets_zeros(tmp_path: Path) -> None:
    path = export(EmptyPermuted(), (torch.randn(2, 4),), tmp_path / "empty.pt2")
    module, _ = loader.load_program(path, torch.device("cpu"), tmp_path)
    x = torch.randn(1, 4)
    for _ in range(5):
        poison = torch.full((1000,), SENTINEL, dtype=torch.int32)
        del poison
        out = module(x)
        assert not (out == SENTINEL).any(), "the program read memory another task left"
        assert not out.any()


def test_fused_attention_scratch_outputs_cannot_be_read() -> None:
    graph = torch.fx.Graph()
    q, k, v = (graph.placeholder(n) for n in "qkv")
    attention = graph.call_function(
        torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default, (q, k, v)
    )
    out = graph.call_function(operator.getitem, (attention, 0))
    scratch = graph.call_function(operator.getitem, (attention, 1))
    graph.output((out, scratch))
    module = torch.fx.GraphModule(nn.Module(), graph)
    assert loader.make_portable(module.graph) == 0  # left as it is: its scratch is used
    with pytest.raises(UnsafeProgram, match="scratch memory"):
        loader.check_loaded(module.graph, _info())


def test_an_out_overload_left_in_a_loaded_graph_is_refused() -> None:
    graph = torch.fx.Graph()
    x = graph.placeholder("x")
    graph.output(graph.call_function(torch.ops.aten.abs.out, (x,), {"out": x}))
    with pytest.raises(UnsafeProgram, match="out="):
        loader.check_loaded(graph, _info())


def test_a_torch_function_in_a_loaded_graph_is_refused() -> None:
    """`torch.from_file` is a plain torch function, not an operator: only the size
    arithmetic helpers the archive may name pass."""
    graph = torch.fx.Graph()
    graph.output(graph.call_function(torch.from_file, ("/etc/passwd",)))
    with pytest.raises(UnsafeProgram, match="from_file"):
        loader.check_loaded(graph, _info())


def _info() -> ProgramInfo:
    return ProgramInfo(root="m", model="model", inputs=[], outputs=[], ranges={})
