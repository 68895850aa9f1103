"""Safetensors files, read and checked without torch: headers, and inputs against a program.

Inference inputs and outputs travel as safetensors (a JSON header, then raw little-endian
tensor bytes), a format with nothing to unpickle. The coordinator checks a shard's header
against the program's signature at submit, so a wrong shape or dtype is refused before
any volunteer sees the job.
"""

import json
import os
import struct
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from sparegrid.wire.pt2 import ITEM_SIZES, ProgramInfo

MAX_HEADER = 100 << 20


class BadTensors(ValueError):
    """A safetensors file is malformed, or does not fit the program it is meant for."""


@dataclass(frozen=True)
class TensorHeader:
    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    def describe(self) -> str:
        return f"{self.name}: {self.dtype}[{', '.join(str(d) for d in self.shape)}]"


def _header_length(prefix: bytes, size: int, label: str) -> int:
    """The declared header length, checked against the real size (`size` bytes in all)
    before anything of that length is read or allocated."""
    if len(prefix) < 8:
        raise BadTensors(f"{label}: too short to be a safetensors file")
    (length,) = struct.unpack("<Q", prefix[:8])
    if length > MAX_HEADER:
        raise BadTensors(f"{label}: header of {length} bytes is implausible")
    if length > size - 8:
        raise BadTensors(f"{label}: header of {length} bytes is longer than the file ({size})")
    return int(length)


def read_header(path: Path) -> dict[str, TensorHeader]:
    """The tensors of a safetensors file, checked for consistency with its size."""
    try:
        with path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            length = _header_length(f.read(8), size, path.name)
            header = f.read(length)
    except OSError as exc:
        raise BadTensors(f"{path.name}: {exc.strerror or exc}") from None
    if len(header) != length:
        raise BadTensors(f"{path.name}: the file changed while its header was read")
    return parse_header(header, size - 8 - length, path.name)


def header_of(data: bytes, label: str) -> dict[str, TensorHeader]:
    """The tensors of safetensors bytes in memory, checked as `read_header` checks a file."""
    length = _header_length(data, len(data), label)
    return parse_header(data[8 : 8 + length], len(data) - 8 - length, label)


def parse_header(header: bytes, data_size: int, label: str = "tensors") -> dict[str, TensorHeader]:
    try:
        raw = json.loads(header)
    except (ValueError, UnicodeDecodeError, RecursionError):  # nested past the stack
        raise BadTensors(f"{label}: not a safetensors file (header is not JSON)") from None
    if not isinstance(raw, dict) or data_size < 0:
        raise BadTensors(f"{label}: not a safetensors file")
    tensors: dict[str, TensorHeader] = {}
    for name, meta in raw.items():
        if name == "__metadata__":
            continue
        tensors[name] = _tensor(label, name, meta, data_size)
    if not tensors:
        raise BadTensors(f"{label}: holds no tensors")
    _check_layout(tensors, data_size, label)
    return tensors


def _check_layout(tensors: dict[str, TensorHeader], data_size: int, label: str) -> None:
    """The tensors' bytes follow one another and fill the file, as the safetensors library
    demands when it loads one: a file with overlaps, gaps or trailing bytes passes no check
    here that a worker's load then refuses."""
    at = 0
    for t in sorted(tensors.values(), key=lambda t: (t.begin, t.end)):
        if t.begin != at:
            why = "overlap another's" if t.begin < at else f"leave bytes {at}..{t.begin} unused"
            raise BadTensors(f"{label}: tensor {t.name!r} bytes {t.begin}..{t.end} {why}")
        at = t.end
    if at != data_size:
        raise BadTensors(f"{label}: {data_size - at} bytes after the last tensor")


def _tensor(label: str, name: str, meta: object, data_size: int) -> TensorHeader:
    if not isinstance(meta, dict):
        raise BadTensors(f"{label}: tensor {name!r} has no metadata")
    dtype, shape, offsets = meta.get("dtype"), meta.get("shape"), meta.get("data_offsets")
    if dtype not in ITEM_SIZES:
        raise BadTensors(f"{label}: tensor {name!r} has unsupported dtype {dtype!r}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise BadTensors(f"{label}: tensor {name!r} has a bad shape {shape!r}")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) for o in offsets)
    ):
        raise BadTensors(f"{label}: tensor {name!r} has bad data_offsets {offsets!r}")
    begin, end = offsets
    numel = 1
    for d in shape:
        numel *= d
    if not 0 <= begin <= end <= data_size or end - begin != numel * ITEM_SIZES[dtype]:
        raise BadTensors(f"{label}: tensor {name!r} bytes {begin}..{end} do not fit the file")
    return TensorHeader(name, dtype, tuple(shape), begin, end)


@dataclass(frozen=True)
class Tensor:
    """A decoded tensor: its safetensors dtype, and its values as numpy holds them (BF16
    and the 8-bit floats, which numpy lacks, widened exactly to float32)."""

    dtype: str
    values: Any  # numpy.ndarray, read-only, shaped as the header says


_NUMPY = {
    "BOOL": "?",
    "U8": "u1",
    "I8": "i1",
    "I16": "<i2",
    "U16": "<u2",
    "F16": "<f2",
    "I32": "<i4",
    "U32": "<u4",
    "F32": "<f4",
    "I64": "<i8",
    "U64": "<u8",
    "F64": "<f8",
}


def decode(data: bytes, label: str = "tensors") -> dict[str, Tensor]:
    """Every tensor of safetensors bytes, with numpy only (no torch): the coordinator
    compares inference outputs in any dtype a worker writes, bf16 included."""
    import numpy as np

    headers = header_of(data, label)
    base = 8 + _header_length(data, len(data), label)
    out = {}
    for name, t in headers.items():
        raw = np.frombuffer(data, dtype=np.uint8, count=t.end - t.begin, offset=base + t.begin)
        if t.dtype == "BF16":  # the top half of a float32
            values = (raw.view("<u2").astype(np.uint32) << 16).view(np.float32)
        elif t.dtype in ("F8_E4M3", "F8_E5M2"):
            values = _f8_table(t.dtype)[raw]
        else:
            values = raw.view(_NUMPY[t.dtype])
        values = values.reshape(t.shape)
        values.flags.writeable = False
        out[name] = Tensor(t.dtype, values)
    return out


@cache
def _f8_table(dtype: str) -> Any:
    """The float32 value of each of the 256 bytes of an 8-bit float: E4M3 as in the OCP
    spec (no infinities, NaN at S.1111.111), E5M2 as a truncated float16."""
    import numpy as np

    byte = np.arange(256, dtype=np.uint32)
    if dtype == "F8_E5M2":
        return (byte << 8).astype(np.uint16).view(np.float16).astype(np.float32)
    sign = np.where(byte & 0x80, -1.0, 1.0)
    exponent, mantissa = (byte >> 3) & 0xF, (byte & 0x7).astype(np.float64)
    normal = (1 + mantissa / 8) * np.exp2(exponent.astype(np.float64) - 7)
    values = sign * np.where(exponent == 0, mantissa / 8 * 2.0**-6, normal)
    values[(exponent == 0xF) & (mantissa == 7)] = np.nan
    return values.astype(np.float32)


def describe(tensors: dict[str, TensorHeader]) -> str:
    return "(" + ", ".join(t.describe() for t in tensors.values()) + ")"


def match_inputs(program: ProgramInfo, tensors: dict[str, TensorHeader], label: str) -> int:
    """Checks a shard against the program's inputs; returns its number of samples.

    Names and dtypes must be equal. The first dimension of every input is the sample axis:
    the worker cuts it into batches, so only its agreement across inputs is checked here
    (`check_batch_size` checks the batch). Other static dimensions must be equal; a
    symbolic one must be within its range and one symbol has one value across inputs.
    """
    wanted = {s.name: s for s in program.inputs}

    def mismatch(why: str) -> BadTensors:
        return BadTensors(
            f"{label}: {why}; the program takes {program.describe_inputs()}, "
            f"the shard holds {describe(tensors)}"
        )

    if set(tensors) != set(wanted):
        raise mismatch("input names differ")
    bound: dict[str, int] = {}
    for name, spec in wanted.items():
        got = tensors[name]
        if got.dtype != spec.dtype:
            raise mismatch(f"{name!r} is {got.dtype}, the program wants {spec.dtype}")
        if len(got.shape) != len(spec.shape) or not got.shape:
            raise mismatch(f"{name!r} has {len(got.shape)} dimensions, not {len(spec.shape)}")
        for axis in range(1, len(spec.shape)):
            have, want = got.shape[axis], spec.shape[axis]
            where = f"{name!r} dimension {axis} is {have}"
            if isinstance(want, int):
                if have != want:
                    raise mismatch(f"{where}, the program fixes it at {want}")
                continue
            low, high = program.ranges.get(want, (0, 2**63 - 1))
            if not low <= have <= high:
                raise mismatch(f"{where}, outside {want} in [{low}, {high}]")
            if bound.setdefault(want, have) != have:
                raise mismatch(f"{where}, but {want} is {bound[want]} elsewhere")
    samples = {t.shape[0] for t in tensors.values()}
    if len(samples) != 1:
        raise mismatch("inputs disagree on the number of samples (first dimension)")
    return samples.pop()


def check_shard(
    program: ProgramInfo, tensors: dict[str, TensorHeader], batch_size: int, label: str
) -> int:
    """A shard fits the program and its batches fit the program: its number of samples."""
    samples = match_inputs(program, tensors, label)
    check_batch_size(program, batch_size, samples)
    return samples


def check_batch_size(program: ProgramInfo, batch_size: int, samples: int) -> None:
    """The program must accept batches of `batch_size` (and the last, shorter one)."""
    first = {s.shape[0] for s in program.inputs}
    if len(first) != 1:
        raise BadTensors(f"the program's inputs disagree on their first dimension: {first}")
    dim = first.pop()
    if isinstance(dim, int):
        if batch_size != dim or samples % dim:
            raise BadTensors(
                f"the program was exported for batches of exactly {dim} (no dynamic batch "
                f"dimension): use batch_size={dim} and a multiple of {dim} samples, or "
                "export with a dynamic batch dimension"
            )
        return
    low, high = program.ranges.get(dim, (0, 2**63 - 1))
    last = samples % batch_size or batch_size
    for size in {batch_size, last}:
        if not low <= size <= high:
            raise BadTensors(
                f"a batch of {size} is outside the program's batch range {dim} in "
                f"[{low}, {high}]; choose a batch size in that range"
            )
