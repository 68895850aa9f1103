"""Checks a `torch.export` archive (.pt2) before anything in it is deserialized.

A volunteer must never run a client's code, and `torch.export.load` can: it unpickles
payloads marked `use_pickle`, custom and opaque objects and the sample inputs; it passes
symbolic shapes to `sympy.sympify` (an `eval`); it `exec`s the program's guard code; and a
graph node may name any callable reachable from `torch`. So the archive is read here with
the standard library only, against an allow-list:

- entries: the format markers, one program (models/<name>.json), raw weight and tensor
  constant payloads and their JSON configs; sample inputs are tolerated because the worker
  drops them unread. Anything else (compiled AOTInductor code, ExecuTorch or MTIA blobs,
  legacy pickled weights, custom or opaque objects, extra files) is refused;
- payload configs: no entry marked `use_pickle`;
- the program: guard code that only compares input sizes, no custom objects, no nested
  graphs, every operator in the `aten` or `prims` namespace (or a few arithmetic helpers
  on sizes) except those `sparegrid.wire.pt2ops` refuses (files, uninitialised memory,
  unchecked views), and every symbolic expression made only of integers, symbols and a
  fixed set of sympy functions;
- the archive itself (`sparegrid.wire.pt2zip`): each name once, plain files only, no
  name that escapes it, no size beyond the file's, no zip bomb. `check_archive` returns
  the bytes it checked, so the worker loads a copy built from exactly those.

The same rules run in the SDK (before upload), the coordinator (at submit) and the worker
(before load), so a refusal names the offending entry at the earliest point.
"""

import json
import re
import zipfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sparegrid.wire.pt2ops import refused_operator
from sparegrid.wire.pt2zip import (
    NotExported,
    UnsafeProgram,
    check_entries,
    open_archive,
    read_entry,
)

MAX_PROGRAM_JSON = 64 << 20  # bytes of models/<name>.json (a ViT-B program: ~1 MB)
MAX_MARKER = 4096  # bytes of a format marker (archive_format, byteorder, ...)
MAX_DIMS = 64

# torch/_export/serde/schema.py ScalarType -> safetensors dtype name
SCALAR_TYPES = {
    1: "U8",
    2: "I8",
    3: "I16",
    4: "I32",
    5: "I64",
    6: "F16",
    7: "F32",
    8: "F64",
    12: "BOOL",
    13: "BF16",
    28: "U16",
    29: "F8_E4M3",
    30: "F8_E5M2",
    34: "U32",
    35: "U64",
}
ITEM_SIZES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
}
FLOAT_DTYPES = frozenset({"F16", "BF16", "F32", "F64", "F8_E4M3", "F8_E5M2"})

ALLOWED_HELPERS = frozenset(
    {f"_operator.{n}" for n in ("getitem", "add", "sub", "mul", "floordiv", "truediv", "mod")}
    | {f"_operator.{n}" for n in ("neg", "pow", "eq", "ne", "lt", "le", "gt", "ge")}
    | {f"_operator.{n}" for n in ("and_", "or_", "not_")}
    | {f"math.{n}" for n in ("ceil", "floor", "trunc", "sqrt")}
    | {f"torch.{n}" for n in ("sym_int", "sym_float", "sym_max", "sym_min", "sym_not")}
    | {"torch.sym_sum", "torch.sym_ite"}
)
# What a symbolic shape may be built of; sympify only ever sees these names.
_SYMPY_NAMES = frozenset(
    {"Symbol", "Integer", "Rational", "Add", "Mul", "Pow", "Mod", "Max", "Min", "Abs"}
    | {"FloorDiv", "CeilDiv", "CleanDiv", "ModularIndexing", "PythonMod", "IntTrueDiv"}
    | {"FloatTrueDiv", "TruncToInt", "CeilToInt", "FloorToInt", "RoundToInt", "ToFloat"}
    | {"Eq", "Ne", "Lt", "Le", "Gt", "Ge", "And", "Or", "Not", "true", "false"}
    | {"True", "False", "positive", "integer", "nonnegative", "real", "finite", "oo"}
)
_EXPR_TOKEN = re.compile(r"\s*(?:([A-Za-z_][A-Za-z0-9_]*)|('[A-Za-z0-9_]*')|(\d+)|([-+*/(),=<>!]))")
_GUARD_TOKEN = re.compile(
    r"L\['[A-Za-z_][A-Za-z0-9_]*'\](?:\.(?:size|stride)\(\)\[\d+\]|\.storage_offset\(\))"
    r"|\d+|==|!=|<=|>=|//|[-+*%<>()]|\b(?:and|or|not)\b|\s+"
)
_SYMBOL = re.compile(r"Symbol\('([A-Za-z_][A-Za-z0-9_]*)'")
# torch counts unbacked symbols up to the largest index it sees: keep the index small
_RANGE_SYMBOL = re.compile(r"[A-Za-z_]{1,32}[0-9]{0,6}")
_PAYLOAD_NAME = re.compile(r"(weight|tensor)_\d+")
_MODEL_NAME = re.compile(r"[A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class TensorSpec:
    """A program input or output: its name, safetensors dtype and shape (str = symbolic)."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]

    def describe(self) -> str:
        dims = ", ".join(str(d) for d in self.shape)
        return f"{self.name}: {self.dtype}[{dims}]"


@dataclass(frozen=True)
class ProgramInfo:
    root: str  # the archive's top folder
    model: str  # the program's name in the archive (models/<model>.json)
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    ranges: dict[str, tuple[int, int]]  # symbol -> (min, max)
    ops: Counter[str] = field(default_factory=Counter)
    flops_per_sample: int = 0  # matmul-class FLOPs with every symbol set to 1
    torch_version: str = ""

    def describe_inputs(self) -> str:
        return "(" + ", ".join(s.describe() for s in self.inputs) + ")"

    def batch_symbol(self) -> str | None:
        """The symbol every input's first dimension shares, when there is one."""
        firsts = {s.shape[0] if s.shape else None for s in self.inputs}
        only = firsts.pop() if len(firsts) == 1 else None
        return only if isinstance(only, str) else None


@dataclass(frozen=True)
class CheckedArchive:
    """What `check_archive` passed: the program, and every file entry of the archive once.

    `checked` holds the bytes of the JSON documents and markers exactly as they were
    checked; the raw tensor payloads (`payloads`) were checked by their sizes only, and
    `dropped` (the pickled sample inputs) must never be read."""

    info: ProgramInfo
    checked: dict[str, bytes]  # full entry name -> bytes
    payloads: list[zipfile.ZipInfo]
    dropped: list[str]


def inspect_pt2(path: Path) -> ProgramInfo:
    """Checks the archive at `path`; raises UnsafeProgram naming what is refused."""
    with open_archive(path) as archive:
        return check_archive(archive, path.stat().st_size).info


def check_archive(archive: zipfile.ZipFile, size: int) -> CheckedArchive:
    """Checks an open archive of `size` bytes; raises UnsafeProgram naming what is refused."""
    infos = archive.infolist()
    for info in infos:  # torch.save's zip: <root>/data.pkl, the pickle of the whole object
        if info.filename.rpartition("/")[2] == "data.pkl":
            raise NotExported(info.filename)
    root = check_entries(infos, size)
    names = {i.filename[len(root) + 1 :]: i for i in infos if not i.is_dir()}
    model = _check_layout(root, names)
    checked: dict[str, bytes] = {}
    for name, info in names.items():
        if name.startswith(("archive_", "byteorder", ".data/")):
            checked[info.filename] = read_entry(archive, info, MAX_MARKER)
    for folder, config in (
        ("weights", f"weights/{model}_weights_config.json"),
        ("constants", f"constants/{model}_constants_config.json"),
    ):
        if f"data/{config}" in names:
            raw = read_entry(archive, names[f"data/{config}"], MAX_PROGRAM_JSON)
            _check_payload_config(root, f"data/{folder}", names, f"{root}/data/{config}", raw)
            checked[f"{root}/data/{config}"] = raw
    entry = f"{root}/models/{model}.json"
    raw = read_entry(archive, names[f"models/{model}.json"], MAX_PROGRAM_JSON)
    program = _check_program(entry, _parse_json(entry, raw), root, model)
    checked[entry] = raw
    payloads = [
        i
        for n, i in names.items()
        if n.startswith(("data/weights/", "data/constants/")) and i.filename not in checked
    ]
    dropped = [i.filename for i in names.values() if i.filename.endswith(".pt")]
    return CheckedArchive(program, checked, payloads, dropped)


def _check_layout(root: str, names: dict[str, zipfile.ZipInfo]) -> str:
    models = [n for n in names if n.startswith("models/")]
    if len(models) != 1:
        raise UnsafeProgram(f"{root}/models/", f"expected one program, found {len(models)}")
    model = models[0][len("models/") :].removesuffix(".json")
    if not models[0].endswith(".json") or not _MODEL_NAME.fullmatch(model):
        raise UnsafeProgram(f"{root}/{models[0]}", "a program is models/<name>.json")
    allowed_files = {
        "archive_format",
        "archive_version",
        "byteorder",
        ".data/version",
        ".data/serialization_id",
        f"models/{model}.json",
        f"data/weights/{model}_weights_config.json",
        f"data/constants/{model}_constants_config.json",
        f"data/sample_inputs/{model}.pt",  # pickled: never read, dropped by the worker
    }
    for name in names:
        if name in allowed_files:
            continue
        folder, _, leaf = name.rpartition("/")
        if folder in ("data/weights", "data/constants") and _PAYLOAD_NAME.fullmatch(leaf):
            continue
        raise UnsafeProgram(f"{root}/{name}", _why_refused(name))
    for required in ("archive_format", "archive_version", f"models/{model}.json"):
        if required not in names:
            raise UnsafeProgram(f"{root}/{required}", "missing: not a torch.export archive")
    return model


def _why_refused(name: str) -> str:
    if name.startswith("data/aotinductor/") or name.endswith((".so", ".cpp", ".o", ".cubin")):
        return "compiled code (AOTInductor) is never run on a volunteer's machine"
    if name.endswith(".pt"):
        return "legacy pickled weights would be unpickled; re-save with torch.export.save"
    if "custom_obj" in name or "opaque_obj" in name:
        return "custom and opaque objects are unpickled at load"
    return "not part of a plain torch.export program (only weights and tensor constants are)"


def _parse_json(entry: str, raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise UnsafeProgram(entry, f"not valid JSON: {exc}") from None


def _check_payload_config(
    root: str, folder: str, names: dict[str, zipfile.ZipInfo], entry: str, raw: bytes
) -> None:
    data = _parse_json(entry, raw)
    items = data.get("config") if isinstance(data, dict) else None
    if not isinstance(items, dict):
        raise UnsafeProgram(entry, "payload config has no 'config' object")
    for fqn, meta in items.items():
        if not isinstance(meta, dict):
            raise UnsafeProgram(entry, f"payload {fqn!r} is not an object")
        path_name = meta.get("path_name")
        if meta.get("use_pickle"):
            raise UnsafeProgram(f"{root}/{folder}/{path_name}", f"{fqn!r} is marked use_pickle")
        if not isinstance(path_name, str) or not _PAYLOAD_NAME.fullmatch(path_name):
            raise UnsafeProgram(entry, f"payload {fqn!r} is {path_name!r}, not a raw tensor")
        payload = names.get(f"{folder}/{path_name}")
        if payload is None:
            raise UnsafeProgram(f"{root}/{folder}/{path_name}", f"{fqn!r} payload is missing")
        needed = _payload_bytes(meta.get("tensor_meta"))
        if needed is None or needed > payload.file_size:
            raise UnsafeProgram(
                f"{root}/{folder}/{path_name}",
                f"{fqn!r} declares a tensor of {needed if needed is not None else 'unreadable'} "
                f"bytes; its payload holds {payload.file_size}",
            )


def _payload_bytes(meta: Any) -> int | None:
    """The bytes a weight's declared sizes, strides and offset reach into its payload (torch
    allocates that much for an empty payload), or None when they are not plain integers."""
    if not isinstance(meta, dict):
        return None
    item = ITEM_SIZES.get(SCALAR_TYPES.get(meta.get("dtype", -1), ""))
    sizes, strides = _plain_ints(meta.get("sizes")), _plain_ints(meta.get("strides"))
    offset = _plain_ints([meta.get("storage_offset", {"as_int": 0})])
    if item is None or sizes is None or strides is None or offset is None:
        return None
    if len(sizes) != len(strides) or len(sizes) > MAX_DIMS:
        return None
    if 0 in sizes:
        return 0
    reach = offset[0] + sum((n - 1) * s for n, s in zip(sizes, strides, strict=True))
    return item * (reach + 1)


def _plain_ints(dims: Any) -> list[int] | None:
    """[{"as_int": 3}, ...] -> [3, ...]; None if any is symbolic, negative or malformed."""
    if not isinstance(dims, list):
        return None
    out = []
    for dim in dims:
        value = dim.get("as_int") if isinstance(dim, dict) else None
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            return None
        out.append(value)
    return out


def _check_program(entry: str, program: Any, root: str, model: str) -> ProgramInfo:
    if not isinstance(program, dict) or not isinstance(program.get("graph_module"), dict):
        raise UnsafeProgram(entry, "not a serialized ExportedProgram")
    guards = program.get("guards_code") or []
    if not isinstance(guards, list):
        raise UnsafeProgram(entry, "guards_code is not a list")
    for guard in guards:
        _check_guard(entry, guard)
    for expr in _strings_under(program, "expr_str"):
        _check_expr(entry, expr)
    ranges = _ranges(entry, program.get("range_constraints") or {})
    module = program["graph_module"]
    graph = module.get("graph")
    if not isinstance(graph, dict) or not isinstance(graph.get("nodes"), list):
        raise UnsafeProgram(entry, "the program has no graph")
    if graph.get("custom_obj_values"):
        raise UnsafeProgram(entry, "custom objects (torchbind) are unpickled at load")
    ops: Counter[str] = Counter()
    for node in graph["nodes"]:
        target = node.get("target") if isinstance(node, dict) else None
        why = operator_refusal(target)
        if why is not None:
            raise UnsafeProgram(entry, f"operator {target!r} is refused: it {why}")
        if next(_strings_under(node.get("inputs", []), "as_graph"), None) is not None:
            raise UnsafeProgram(entry, f"operator {target!r} carries a nested graph")
        ops[str(target)] += 1
    tensors = graph.get("tensor_values") or {}
    signature = module.get("signature") or {}
    inputs = _user_tensors(entry, signature.get("input_specs", []), "user_input", tensors)
    outputs = _user_tensors(entry, signature.get("output_specs", []), "user_output", tensors)
    if not inputs:
        raise UnsafeProgram(entry, "the program takes no tensor input")
    return ProgramInfo(
        root=root,
        model=model,
        inputs=inputs,
        outputs=outputs,
        ranges=ranges,
        ops=ops,
        flops_per_sample=_flops(graph["nodes"], tensors),
        torch_version=str(program.get("torch_version", "")),
    )


def operator_refusal(target: Any) -> str | None:
    """Why a graph node's target is refused ("reads a file ..."), or None if allowed."""
    if not isinstance(target, str):
        return "is not an operator name"
    if target in ALLOWED_HELPERS:
        return None
    return refused_operator(target)


def _strings_under(value: Any, key: str) -> Iterator[Any]:
    if isinstance(value, dict):
        for k, v in value.items():
            if k == key:
                yield v
            else:
                yield from _strings_under(v, key)
    elif isinstance(value, list):
        for item in value:
            yield from _strings_under(item, key)


def _check_expr(entry: str, expr: Any) -> None:
    if not isinstance(expr, str) or len(expr) > 10_000:
        raise UnsafeProgram(entry, "a symbolic shape is not a short string")
    pos = 0
    while pos < len(expr):
        match = _EXPR_TOKEN.match(expr, pos)
        if match is None or match.end() == pos:
            if expr[pos:].strip() == "":
                break
            raise UnsafeProgram(entry, f"symbolic shape {expr[:80]!r} is not a plain expression")
        name = match.group(1)
        if name is not None and name not in _SYMPY_NAMES:
            raise UnsafeProgram(entry, f"symbolic shape {expr[:80]!r} calls {name!r}")
        pos = match.end()


def _check_guard(entry: str, guard: Any) -> None:
    """Guards are Python that torch `exec`s; only comparisons of input sizes may pass."""
    if not isinstance(guard, str) or len(guard) > 2_000:
        raise UnsafeProgram(entry, "guard code would be executed at load (guards_code)")
    rest = _GUARD_TOKEN.sub("", guard)
    if rest.strip():
        raise UnsafeProgram(
            entry, f"guard code would be executed at load: {guard[:80]!r} is not a size check"
        )


def _ranges(entry: str, raw: Any) -> dict[str, tuple[int, int]]:
    if not isinstance(raw, dict):
        raise UnsafeProgram(entry, "range_constraints is not an object")
    ranges = {}
    for symbol, bounds in raw.items():
        if not isinstance(symbol, str) or not _RANGE_SYMBOL.fullmatch(symbol):
            raise UnsafeProgram(entry, f"range constraint on {symbol!r}")
        low, high = (bounds or {}).get("min_val"), (bounds or {}).get("max_val")
        low = low if isinstance(low, int) else 0
        high = high if isinstance(high, int) else 2**63 - 1
        ranges[symbol] = (low, high)
    return ranges


def _size(dim: Any) -> int | str:
    if isinstance(dim, dict) and isinstance(dim.get("as_int"), int):
        return int(dim["as_int"])
    expr = dim.get("as_expr", {}).get("expr_str", "?") if isinstance(dim, dict) else "?"
    symbol = _SYMBOL.match(expr) if isinstance(expr, str) else None
    return symbol.group(1) if symbol else str(expr)


def _tensor_spec(name: str, meta: Any) -> TensorSpec | None:
    if not isinstance(meta, dict):
        return None
    dtype = SCALAR_TYPES.get(meta.get("dtype", -1), f"dtype#{meta.get('dtype')}")
    return TensorSpec(name, dtype, tuple(_size(d) for d in meta.get("sizes", [])))


def _user_tensors(
    entry: str, specs: list[Any], kind: str, tensors: dict[str, Any]
) -> list[TensorSpec]:
    out = []
    for spec in specs:
        if not isinstance(spec, dict) or kind not in spec:
            continue
        arg = spec[kind].get("arg", {})
        if "as_tensor" not in arg:
            what = next(iter(arg), "?")
            raise UnsafeProgram(entry, f"a {kind} is {what}; only tensors are supported")
        name = arg["as_tensor"]["name"]
        tensor = _tensor_spec(name, tensors.get(name))
        if tensor is None:
            raise UnsafeProgram(entry, f"{kind} {name!r} has no tensor metadata")
        out.append(tensor)
    return out


def _numel(shape: tuple[int | str, ...]) -> int:
    total = 1
    for d in shape:
        total *= d if isinstance(d, int) else 1  # symbols (the batch) count as 1
    return total


def _flops(nodes: list[Any], tensors: dict[str, Any]) -> int:
    """Multiply-accumulate FLOPs of matmul-class operators, per sample (symbols = 1)."""

    def shape(arg: Any) -> tuple[int | str, ...]:
        name = arg.get("as_tensor", {}).get("name") if isinstance(arg, dict) else None
        spec = _tensor_spec(name or "", tensors.get(name or ""))
        return spec.shape if spec else ()

    total = 0
    for node in nodes:
        op = node["target"].removeprefix("torch.ops.aten.").split(".")[0]
        args = [i.get("arg") for i in node.get("inputs", [])]
        outs = [shape(o) for o in node.get("outputs", [])]
        if not args or not outs:
            continue
        out = _numel(outs[0])
        if op in ("linear", "mm", "addmm", "matmul", "bmm", "baddbmm"):
            a = shape(args[1] if op in ("addmm", "baddbmm") else args[0])
            total += 2 * out * (a[-1] if a and isinstance(a[-1], int) else 1)
        elif op in ("conv1d", "conv2d", "conv3d", "convolution"):
            w = shape(args[1])
            total += 2 * out * _numel(w[1:])
        elif op == "scaled_dot_product_attention":
            q, k = shape(args[0]), shape(args[1])
            if len(q) >= 2 and len(k) >= 2:
                total += 4 * _numel(q) * (k[-2] if isinstance(k[-2], int) else 1)
    return total
