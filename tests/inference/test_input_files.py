"""Inference inputs from files: a folder of safetensors files and Parquet or Arrow tables,
read a slice at a time into the shards the coordinator expects; bad files are refused,
naming the file or the column, before a shard is made."""

import importlib.abc
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load, save_file

from sparegrid.sdk import InvalidArgumentError
from sparegrid.sdk.inference import Plan
from tests.inference.models import TwoHeads, export


@pytest.fixture(scope="module")
def two_heads_pt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A program of two inputs, x: F32[batch, 8] and y: F32[batch, 8]."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("programs") / "two.pt2"
    return export(TwoHeads(), (torch.randn(4, 8), torch.randn(4, 8)), path)


def shards(program: Path, inputs: Path, tmp_path: Path, batch_size: int = 4) -> list[dict]:
    plan = Plan(program, inputs, batch_size, 2, tmp_path)
    found = []
    while (shard := plan.next_shard()) is not None:
        found.append(load(shard[1]))
    return found


def joined(found: list[dict], name: str) -> torch.Tensor:
    return torch.cat([s[name] for s in found])


def refusal(program: Path, inputs: Path, tmp_path: Path) -> str:
    with pytest.raises(InvalidArgumentError) as caught:
        shards(program, inputs, tmp_path)
    assert caught.value.code == "BAD_INPUTS"
    return caught.value.message


# --- a folder of safetensors files ------------------------------------------------------


def test_a_folder_is_joined_in_sorted_file_name_order(two_heads_pt2: Path, tmp_path: Path) -> None:
    folder = tmp_path / "inputs"
    folder.mkdir()
    parts = {"part_10": 3, "part_02": 5, "part_01": 6}  # written out of order
    tensors = {}
    for name, count in parts.items():
        tensors[name] = {"x": torch.randn(count, 8), "y": torch.randn(count, 8)}
        save_file(tensors[name], str(folder / f"{name}.safetensors"))
    (folder / "README.txt").write_text("not an input")
    found = shards(two_heads_pt2, folder, tmp_path)
    assert [len(s["x"]) for s in found] == [8, 6]  # shards of 2 batches of 4: 14 samples
    order = ["part_01", "part_02", "part_10"]
    for name in ("x", "y"):
        assert torch.equal(joined(found, name), torch.cat([tensors[p][name] for p in order]))


def test_a_large_safetensors_file_is_read_a_slice_at_a_time(
    two_heads_pt2: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sparegrid.sdk import inputfiles

    monkeypatch.setattr(inputfiles, "CHUNK_BYTES", 64 * 10)  # 10 samples of 2 x 8 floats
    x, y = torch.randn(33, 8), torch.randn(33, 8)
    save_file({"x": x, "y": y}, str(tmp_path / "in.safetensors"))
    slices = list(inputfiles.batches(tmp_path / "in.safetensors"))
    assert [len(s["x"]) for s in slices] == [10, 10, 10, 3]
    found = shards(two_heads_pt2, tmp_path / "in.safetensors", tmp_path)
    assert torch.equal(joined(found, "x"), x) and torch.equal(joined(found, "y"), y)


def _folder(tmp_path: Path, files: dict[str, dict[str, torch.Tensor] | bytes]) -> Path:
    folder = tmp_path / "inputs"
    folder.mkdir(exist_ok=True)
    for name, content in files.items():
        if isinstance(content, bytes):
            (folder / name).write_bytes(content)
        else:
            save_file(content, str(folder / name))
    return folder


GOOD = {"x": torch.randn(4, 8), "y": torch.randn(4, 8)}


@pytest.mark.parametrize(
    ("second", "why"),
    [
        (
            {"x": torch.randn(4, 8)},
            "b.safetensors holds tensors ['x'], a.safetensors holds ['x', 'y']: every file",
        ),
        (
            {"x": torch.randn(4, 8, dtype=torch.float64), "y": torch.randn(4, 8)},
            "b.safetensors: tensor x: F64[4, 8], but a.safetensors has x: F32[4, 8]",
        ),
        (
            {"x": torch.randn(4, 9), "y": torch.randn(4, 8)},
            "b.safetensors: tensor x: F32[4, 9], but a.safetensors has x: F32[4, 8]",
        ),
        (
            {"x": torch.randn(4, 8), "y": torch.randn(5, 8)},
            "b.safetensors: tensors disagree on the number of samples (first dimension)",
        ),
        (b"\x09\x00\x00\x00\x00\x00\x00\x00{not json", "b.safetensors: not a safetensors file"),
        (
            b"\xff\x00\x00\x00\x00\x00\x00\x00{}",
            "b.safetensors: header of 255 bytes is longer than the file",
        ),
    ],
    ids=["names", "dtype", "shape", "samples", "corrupt", "truncated"],
)
def test_a_folder_with_one_odd_file_is_refused_naming_it(
    two_heads_pt2: Path, tmp_path: Path, second: dict | bytes, why: str
) -> None:
    folder = _folder(tmp_path, {"a.safetensors": GOOD, "b.safetensors": second})
    message = refusal(two_heads_pt2, folder, tmp_path)
    assert why in message
    assert str(folder) in message


def test_a_file_of_no_input_format_is_refused_naming_the_formats(
    two_heads_pt2: Path, tmp_path: Path
) -> None:
    """Random bytes used to be read as a safetensors header: 'header of 1516... bytes is
    implausible', which told the user nothing about what --inputs takes."""
    path = tmp_path / "file.bin"
    path.write_bytes(bytes(range(7, 256)) * 4)
    assert refusal(two_heads_pt2, path, tmp_path) == (
        f"{path} is not a safetensors file, nor a Parquet or Arrow table (told by its first "
        "bytes); inputs are one of those, or a folder of safetensors files"
    )


def test_an_empty_folder_is_refused(two_heads_pt2: Path, tmp_path: Path) -> None:
    folder = _folder(tmp_path, {"notes.txt": b"hello"})
    message = refusal(two_heads_pt2, folder, tmp_path)
    assert message == f"inputs folder {folder} holds no .safetensors files"


# --- Parquet and Arrow tables -----------------------------------------------------------


def _table(x: np.ndarray, y: np.ndarray) -> pa.Table:
    """x as a fixed-size list per row, y as an arrow.fixed_shape_tensor."""
    xs = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), x.shape[1])
    ys = pa.FixedShapeTensorArray.from_numpy_ndarray(y)
    return pa.table({"x": xs, "y": ys})


@pytest.mark.parametrize("fmt", ["parquet", "arrow-file", "arrow-stream"])
def test_a_table_streams_into_shards(two_heads_pt2: Path, tmp_path: Path, fmt: str) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((21, 8), dtype=np.float32)
    y = rng.standard_normal((21, 8), dtype=np.float32)
    path = tmp_path / "in.table"  # told by its first bytes, not its name
    table = _table(x, y)
    if fmt == "parquet":
        pq.write_table(table, path, row_group_size=5)
    else:
        new = pa.ipc.new_stream if fmt == "arrow-stream" else pa.ipc.new_file
        with new(str(path), table.schema) as writer:
            writer.write_table(table, max_chunksize=7)
    found = shards(two_heads_pt2, path, tmp_path)
    assert [len(s["x"]) for s in found] == [8, 8, 5]
    assert np.array_equal(joined(found, "x").numpy(), x)
    assert np.array_equal(joined(found, "y").numpy(), y)


def test_nested_lists_and_number_columns_keep_their_shapes(tmp_path: Path) -> None:
    from sparegrid.sdk import inputfiles

    images = np.arange(4 * 2 * 3, dtype=np.uint8).reshape(4, 2, 3)
    rows = pa.FixedSizeListArray.from_arrays(pa.array(images.reshape(-1)), 3)
    column = pa.FixedSizeListArray.from_arrays(rows, 2)
    labels = pa.array([1, 2, 3, 4], pa.int64())
    halves = pa.array(np.array([0.5, 1, 2, 4], np.float16))
    flags = pa.array([True, False, True, True])
    table = pa.table({"image": column, "label": labels, "half": halves, "flag": flags})
    pq.write_table(table, tmp_path / "t.parquet")
    (batch,) = inputfiles.batches(tmp_path / "t.parquet")
    assert batch["image"].dtype == torch.uint8 and batch["image"].shape == (4, 2, 3)
    assert torch.equal(batch["image"], torch.from_numpy(images))
    assert batch["label"].tolist() == [1, 2, 3, 4] and batch["label"].dtype == torch.int64
    assert batch["half"].dtype == torch.float16 and batch["flag"].tolist() == [1, 0, 1, 1]


def test_a_slice_of_a_record_batch_keeps_its_offset(tmp_path: Path, monkeypatch) -> None:
    from sparegrid.sdk import inputfiles

    monkeypatch.setattr(inputfiles, "CHUNK_BYTES", 3 * 2 * 4)  # three rows of 2 floats
    x = np.arange(20, dtype=np.float32).reshape(10, 2)
    table = pa.table({"x": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), 2)})
    with pa.ipc.new_file(str(tmp_path / "t.arrow"), table.schema) as writer:
        writer.write_table(table)  # one record batch of 10 rows
    slices = list(inputfiles.batches(tmp_path / "t.arrow"))
    assert [len(s["x"]) for s in slices] == [3, 3, 3, 1]
    assert np.array_equal(torch.cat([s["x"] for s in slices]).numpy(), x)


@pytest.mark.parametrize(
    ("column", "why"),
    [
        (pa.array(["a", "b"]), "column 'y' is string, not a tensor"),
        (pa.array([[1.0], [2.0, 3.0]]), "column 'y' is list<element: double>, not a tensor"),
        (
            pa.array([{"a": 1}, {"a": 2}]),
            "column 'y' is struct<a: int64>, not a tensor",
        ),
    ],
    ids=["string", "variable-list", "struct"],
)
def test_a_non_tensor_column_is_refused_naming_it(
    two_heads_pt2: Path, tmp_path: Path, column: pa.Array, why: str
) -> None:
    x = pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(16, np.float32)), 8)
    pq.write_table(pa.table({"x": x, "y": column}), tmp_path / "t.parquet")
    message = refusal(two_heads_pt2, tmp_path / "t.parquet", tmp_path)
    assert message.startswith(f"{tmp_path / 't.parquet'}: {why}")


def test_a_null_is_refused_naming_the_column_and_rows(two_heads_pt2: Path, tmp_path: Path) -> None:
    values = pa.array([1.0] * 8 + [None] * 8 + [1.0] * 8, pa.float32())
    x = pa.FixedSizeListArray.from_arrays(values, 8)
    y = pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(24, np.float32)), 8)
    pq.write_table(pa.table({"x": x, "y": y}), tmp_path / "t.parquet")
    message = refusal(two_heads_pt2, tmp_path / "t.parquet", tmp_path)
    assert "column 'x' holds a null in rows 0..2" in message


@pytest.mark.parametrize("magic", [b"PAR1", b"ARROW1\x00\x00"])
def test_a_corrupt_table_is_refused_naming_the_file(
    two_heads_pt2: Path, tmp_path: Path, magic: bytes
) -> None:
    path = tmp_path / "broken"
    path.write_bytes(magic + b"\x00" * 100)
    message = refusal(two_heads_pt2, path, tmp_path)
    assert message.startswith(f"{path}: not a") and "pyarrow can read" in message


def test_without_pyarrow_the_error_says_what_to_install(
    two_heads_pt2: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    x = pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(16, np.float32)), 8)
    pq.write_table(pa.table({"x": x, "y": x}), tmp_path / "t.parquet")
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow -> ImportError
    with pytest.raises(InvalidArgumentError) as caught:
        shards(two_heads_pt2, tmp_path / "t.parquet", tmp_path)
    assert caught.value.code == "PYARROW_MISSING"
    assert "pip install 'sparegrid[arrow]'" in caught.value.message


class _NumpyTooOld(importlib.abc.MetaPathFinder):
    """pyarrow 26 as it imports beside bpy's NumPy 1.26."""

    def find_spec(self, name: str, path: object, target: object = None) -> None:
        if name == "pyarrow":
            raise ImportError("pyarrow requires NumPy 2.0 or newer, found 1.26.4")


def test_a_pyarrow_for_another_numpy_is_named_with_the_version_that_fits(
    two_heads_pt2: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`sparegrid[arrow]` beside `sparegrid[render]` once pulled a pyarrow that needs NumPy
    2, which bpy's NumPy 1 cannot give; the hint to install sparegrid[arrow] went round."""
    x = pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(16, np.float32)), 8)
    pq.write_table(pa.table({"x": x, "y": x}), tmp_path / "t.parquet")
    for name in [m for m in sys.modules if m == "pyarrow" or m.startswith("pyarrow.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "meta_path", [_NumpyTooOld(), *sys.meta_path])
    with pytest.raises(InvalidArgumentError) as caught:
        shards(two_heads_pt2, tmp_path / "t.parquet", tmp_path)
    assert caught.value.code == "PYARROW_MISSING"
    assert "installed but does not load here" in caught.value.message
    assert "pip install 'pyarrow>=17,<26'" in caught.value.message


# --- streaming: a large table is read record batch by record batch ----------------------


def _zero_row_group(path: Path, index: int) -> None:
    """Overwrites one row group's pages with zeros: reading it fails, the others read."""
    meta = pq.ParquetFile(path).metadata.row_group(index)
    with path.open("r+b") as f:
        for i in range(meta.num_columns):
            column = meta.column(i)
            start = column.dictionary_page_offset or column.data_page_offset
            f.seek(start)
            f.write(b"\x00" * column.total_compressed_size)


def test_shards_come_before_the_rest_of_a_parquet_file_is_read(
    two_heads_pt2: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sparegrid.sdk import inputfiles

    monkeypatch.setattr(inputfiles, "CHUNK_BYTES", 40 * 64)  # 40 rows of 2 x 8 floats
    rng = np.random.default_rng(1)
    x = rng.standard_normal((400, 8), dtype=np.float32)
    path = tmp_path / "t.parquet"
    pq.write_table(_table(x, x), path, row_group_size=40)
    _zero_row_group(path, 9)  # the last one
    plan = Plan(two_heads_pt2, path, 4, 2, tmp_path)
    made = [plan.next_shard() for _ in range(40)]  # 320 of the 400 rows
    assert all(shard is not None for shard in made)
    with pytest.raises(InvalidArgumentError) as caught:
        while plan.next_shard() is not None:
            pass
    assert caught.value.code == "BAD_INPUTS"
    assert caught.value.message.startswith(f"{path}: cannot read rows from row 360 on")


@pytest.mark.timeout(120)
def test_a_table_larger_than_what_is_held_streams_in_bounded_memory(
    two_heads_pt2: Path, tmp_path: Path
) -> None:
    """128 MiB of samples (a 200 MB file of two row groups), read 1 MiB at a time: the
    reader's Arrow allocations and the process's memory stay far below the file's size, and
    below a row group's, while every shard is made (in a fresh process, to measure it)."""
    path = tmp_path / "big.parquet"
    rows_per_group, groups = 1 << 20, 2
    schema = pa.schema([("x", pa.list_(pa.float32(), 8)), ("y", pa.list_(pa.float32(), 8))])
    rng = np.random.default_rng(2)
    with pq.ParquetWriter(path, schema, compression="none") as writer:
        for _ in range(groups):
            x = rng.standard_normal((rows_per_group, 8), dtype=np.float32)
            column = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), 8)
            writer.write_table(pa.table({"x": column, "y": column}))
    script = textwrap.dedent(
        f"""
        import os, tempfile
        from pathlib import Path
        import pyarrow as pa, pyarrow.parquet, safetensors.torch, torch
        from sparegrid.sdk import inputfiles
        from sparegrid.sdk.inference import Plan
        inputfiles.CHUNK_BYTES = 1 << 20
        def rss():
            return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGESIZE")
        base = rss()
        plan = Plan(Path({str(two_heads_pt2)!r}), Path({str(path)!r}), 1024, 4,
                    Path(tempfile.mkdtemp()))
        made, growth = 0, 0
        while plan.next_shard() is not None:
            made += 1
            growth = max(growth, rss() - base)
        print(made, pa.default_memory_pool().max_memory(), growth)
        """
    )
    env = os.environ | {"ARROW_DEFAULT_MEMORY_POOL": "system"}  # mimalloc keeps freed pages
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    made, arrow_peak, rss_growth = (int(v) for v in done.stdout.split())
    size = path.stat().st_size
    assert size > 128 << 20 and made == groups * rows_per_group // (1024 * 4)
    assert arrow_peak < size // 8, (arrow_peak, size)
    assert rss_growth < size // 2, (rss_growth, size)


def test_a_table_whose_columns_are_not_the_programs_inputs_is_refused_naming_it(
    two_heads_pt2: Path, tmp_path: Path
) -> None:
    x = pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(16, np.float32)), 8)
    pq.write_table(pa.table({"x": x, "label": pa.array([1, 2])}), tmp_path / "t.parquet")
    message = refusal(two_heads_pt2, tmp_path / "t.parquet", tmp_path)
    assert message == (
        f"{tmp_path / 't.parquet'}: inputs are named ['label', 'x'], the program's ['x', 'y']: "
        "name the tensors (a file's tensors, a table's columns, a dict's keys) as the program "
        "names its inputs"
    )
