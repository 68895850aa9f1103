"""Inference inputs read from files, a slice of samples at a time.

`client.infer(model, PATH)` and `sparegrid job submit inference --inputs PATH` take:

- a safetensors file: its tensors are the program's inputs, samples along the first
  dimension;
- a folder of safetensors files: every `*.safetensors` file directly in it, in sorted
  file-name order (`part_0002` before `part_0010`: pad the numbers), joined along the
  first dimension. Every file holds the same tensor names, each with the same dtype and
  the same dimensions after the first;
- a Parquet file, or an Arrow IPC file or stream (Feather v2): one column per input, named
  as the program's input, one row per sample. A column is a number type (one scalar per
  sample), a fixed-size list of one (nested for more dimensions: a sample of shape [3, 16]
  is `fixed_size_list<fixed_size_list<float, 16>, 3>`), or an `arrow.fixed_shape_tensor`
  (row-major). No nulls. Needs pyarrow (`pip install 'sparegrid[arrow]'`).

Every file's header (or the table's schema) is checked before any sample is read, so a
folder with one odd file or a table with a non-tensor column is refused, naming it, before
anything is uploaded. Samples are then read a slice at a time (safetensors through a memory
map, tables record batch by record batch), so an input larger than memory streams into
shards. The format is told by the file's first bytes, not its name.
"""

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sparegrid.sdk.errors import InvalidArgumentError
from sparegrid.wire.pt2 import ITEM_SIZES
from sparegrid.wire.tensors import BadTensors, TensorHeader, read_header

if TYPE_CHECKING:
    import torch

CHUNK_BYTES = 16 << 20  # samples read at a time: about this many bytes of them
PARQUET_MAGIC = b"PAR1"
ARROW_FILE_MAGIC = b"ARROW1"
ARROW_STREAM_MAGIC = b"\xff\xff\xff\xff"
TENSOR_COLUMNS = (
    "a number type, a fixed-size list of one (nested for more dimensions) or an "
    "arrow.fixed_shape_tensor"
)

Batch = dict[str, "torch.Tensor"]


def bad(message: str) -> InvalidArgumentError:
    return InvalidArgumentError("BAD_INPUTS", message)


def batches(path: Path) -> Iterator[Batch]:
    """The samples at `path` in slices; every header or schema is checked first."""
    if path.is_dir():
        return _safetensors(_folder(path))
    if not path.is_file():
        raise bad(f"inputs: no such file or folder {path}")
    with path.open("rb") as f:
        head = f.read(9)
    if head.startswith(PARQUET_MAGIC):
        return _parquet(path)
    if head.startswith((ARROW_FILE_MAGIC, ARROW_STREAM_MAGIC)):
        return _arrow(path, stream=not head.startswith(ARROW_FILE_MAGIC))
    if head[8:9] != b"{":  # a safetensors file: a header length, then its JSON header
        raise bad(
            f"{path} is not a safetensors file, nor a Parquet or Arrow table (told by its "
            "first bytes); inputs are one of those, or a folder of safetensors files"
        )
    return _safetensors([path])


# --- safetensors ------------------------------------------------------------------------


def _folder(folder: Path) -> list[Path]:
    paths = sorted(p for p in folder.iterdir() if p.suffix == ".safetensors" and p.is_file())
    if not paths:
        raise bad(f"inputs folder {folder} holds no .safetensors files")
    return paths


def _safetensors(paths: list[Path]) -> Iterator[Batch]:
    headers = [(path, _header(path)) for path in paths]
    first_path, first = headers[0]
    for path, header in headers[1:]:
        _agree(first_path, first, path, header)
    return _read_safetensors(headers)


def _header(path: Path) -> dict[str, TensorHeader]:
    """A file's tensors, checked by our own reader and by the one that will read them."""
    from safetensors import safe_open

    try:
        tensors = read_header(path)
        with safe_open(str(path), framework="pt"):
            pass
    except BadTensors as exc:
        raise bad(f"{path.parent / str(exc)}") from None
    except Exception as exc:  # safetensors' own error type is not importable by name
        raise bad(f"{path}: not a safetensors file: {exc}") from None
    for tensor in tensors.values():
        if not tensor.shape:
            raise bad(f"{path}: tensor {tensor.name!r} has no sample (first) dimension")
    if len({t.shape[0] for t in tensors.values()}) != 1:
        shapes = ", ".join(t.describe() for t in tensors.values())
        raise bad(f"{path}: tensors disagree on the number of samples (first dimension): {shapes}")
    return tensors


def _agree(
    first_path: Path, first: dict[str, TensorHeader], path: Path, header: dict[str, TensorHeader]
) -> None:
    if set(header) != set(first):
        raise bad(
            f"{path} holds tensors {sorted(header)}, {first_path.name} holds {sorted(first)}: "
            "every file of an inputs folder holds the same tensor names"
        )
    for name, tensor in header.items():
        want = first[name]
        if tensor.dtype != want.dtype or tensor.shape[1:] != want.shape[1:]:
            raise bad(
                f"{path}: tensor {tensor.describe()}, but {first_path.name} has "
                f"{want.describe()}; files are joined along the first dimension, so the "
                "dtype and the other dimensions must agree"
            )


def _read_safetensors(headers: list[tuple[Path, dict[str, TensorHeader]]]) -> Iterator[Batch]:
    from safetensors import safe_open

    for path, header in headers:
        samples = next(iter(header.values())).shape[0]
        per_sample = sum(_numel(t.shape[1:]) * ITEM_SIZES[t.dtype] for t in header.values())
        rows = _rows(per_sample)
        with safe_open(str(path), framework="pt") as f:
            for start in range(0, samples, rows):
                yield {name: f.get_slice(name)[start : start + rows] for name in header}


# --- Parquet and Arrow ------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    """A table column that holds one tensor input: one sample's dtype and shape."""

    name: str
    dtype: str  # safetensors' name
    shape: tuple[int, ...]


def _pyarrow() -> Any:
    try:
        import pyarrow
    except ModuleNotFoundError as exc:
        raise InvalidArgumentError(
            "PYARROW_MISSING",
            f"Parquet and Arrow inputs need pyarrow: pip install 'sparegrid[arrow]' ({exc})",
        ) from None
    except ImportError as exc:  # installed, but built for another NumPy (or broken)
        fix = (
            " pip install 'pyarrow>=17,<26' (pyarrow 26 needs NumPy 2; bpy 5.0.1 needs NumPy 1)"
            if "numpy" in str(exc).lower()
            else " reinstall it: pip install --force-reinstall 'sparegrid[arrow]'"
        )
        raise InvalidArgumentError(
            "PYARROW_MISSING",
            f"Parquet and Arrow inputs need pyarrow, which is installed but does not load "
            f"here ({exc}):{fix}",
        ) from None
    return pyarrow


def _parquet(path: Path) -> Iterator[Batch]:
    pa = _pyarrow()
    import pyarrow.parquet

    pq: Any = pyarrow.parquet  # partly typed
    try:
        # pre_buffer (pyarrow's default) would read every row group ahead of the first
        # batch; a read buffer lets a column chunk be read page by page
        table = pq.ParquetFile(path, pre_buffer=False, buffer_size=1 << 20)
        columns = _columns(pa, table.schema_arrow, path)
    except (pa.ArrowException, OSError) as exc:
        raise bad(f"{path}: not a Parquet file pyarrow can read: {exc}") from None
    rows = _rows(sum(_numel(c.shape) * ITEM_SIZES[c.dtype] for c in columns))
    return _read_table(pa, path, columns, table.iter_batches(batch_size=rows))


def _arrow(path: Path, stream: bool) -> Iterator[Batch]:
    pa = _pyarrow()
    try:
        source = pa.memory_map(str(path))
        reader = pa.ipc.open_stream(source) if stream else pa.ipc.open_file(source)
        columns = _columns(pa, reader.schema, path)
    except (pa.ArrowException, OSError) as exc:
        raise bad(f"{path}: not an Arrow IPC file pyarrow can read: {exc}") from None
    rows = _rows(sum(_numel(c.shape) * ITEM_SIZES[c.dtype] for c in columns))
    if stream:
        record_batches = iter(reader)
    else:
        record_batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
    return _read_table(pa, path, columns, _sliced(record_batches, rows))


def _sliced(record_batches: Iterator[Any], rows: int) -> Iterator[Any]:
    """An Arrow writer's record batches may be large: slices of at most `rows` rows (a
    memory-mapped, uncompressed batch is not read until a slice is converted)."""
    for batch in record_batches:
        for start in range(0, batch.num_rows, rows):
            yield batch.slice(start, rows)


def _columns(pa: Any, schema: Any, path: Path) -> list[Column]:
    if not len(schema):
        raise bad(f"{path}: the table has no columns")
    return [_column(pa, field, path) for field in schema]


def _column(pa: Any, field: Any, path: Path) -> Column:
    kind, shape = field.type, []
    if isinstance(kind, pa.FixedShapeTensorType):
        if kind.permutation is not None and list(kind.permutation) != sorted(kind.permutation):
            raise bad(f"{path}: column {field.name!r} is a permuted tensor; write it row-major")
        shape, kind = list(kind.shape), kind.value_type
    else:
        while pa.types.is_fixed_size_list(kind):
            shape.append(kind.list_size)
            kind = kind.value_type
    dtype = _DTYPES.get(str(kind))
    if dtype is None:
        raise bad(
            f"{path}: column {field.name!r} is {field.type}, not a tensor: an input column "
            f"is {TENSOR_COLUMNS} (no strings, variable-length lists or structs)"
        )
    return Column(field.name, dtype, tuple(shape))


# pyarrow's type names -> safetensors' (bf16 has no Arrow type: cast in the model)
_DTYPES = {
    "bool": "BOOL",
    "int8": "I8",
    "uint8": "U8",
    "int16": "I16",
    "uint16": "U16",
    "int32": "I32",
    "uint32": "U32",
    "int64": "I64",
    "uint64": "U64",
    "halffloat": "F16",
    "float": "F32",
    "double": "F64",
}


def _read_table(
    pa: Any, path: Path, columns: list[Column], record_batches: Iterator[Any]
) -> Iterator[Batch]:
    row = 0
    while True:
        try:
            batch = next(record_batches, None)
        except (pa.ArrowException, OSError) as exc:
            raise bad(f"{path}: cannot read rows from row {row} on: {exc}") from None
        if batch is None:
            return
        yield {c.name: _tensor(pa, batch.column(c.name), c, path, row) for c in columns}
        row += batch.num_rows


def _tensor(pa: Any, array: Any, column: Column, path: Path, row: int) -> "torch.Tensor":
    import torch

    values = array.storage if isinstance(array, pa.ExtensionArray) else array
    for depth in range(len(column.shape) + 1):
        if values.null_count:
            raise bad(
                f"{path}: column {column.name!r} holds a null in rows {row}.."
                f"{row + len(array) - 1}; every sample needs a value"
            )
        if depth < len(column.shape):
            values = values.flatten()  # minds the slice's offset, unlike .values
    flat = values.to_numpy(zero_copy_only=False, writable=True)
    return torch.from_numpy(flat.reshape((len(array), *column.shape)))


# --- sizes ------------------------------------------------------------------------------


def _numel(shape: tuple[int, ...]) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count


def _rows(per_sample: int) -> int:
    return max(1, CHUNK_BYTES // max(1, per_sample))
