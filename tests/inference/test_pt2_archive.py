"""The .pt2 archive itself: what torch's zip reader would see differently from Python's,
pickles in any slot, and sizes declared beyond what the file holds."""

import json
import pickle
import stat
import struct
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.export.pt2_archive._package import PT2ArchiveReader

from sparegrid.wire.pt2 import check_archive, inspect_pt2
from sparegrid.wire.pt2zip import UnsafeProgram
from sparegrid.wire.tensors import BadTensors, header_of, read_header
from sparegrid.worker.executors.inference.loader import load_program, sanitized_copy
from tests.inference.models import read, rewrite


def _entries(source: Path) -> list[tuple[zipfile.ZipInfo, bytes]]:
    with zipfile.ZipFile(source) as z:
        return [(i, z.read(i)) for i in z.infolist()]


def _write(dest: Path, entries: list[tuple[zipfile.ZipInfo | str, bytes]]) -> Path:
    with warnings.catch_warnings(), zipfile.ZipFile(dest, "w") as out:
        warnings.simplefilter("ignore", UserWarning)  # "Duplicate name": the point
        for info, data in entries:
            out.writestr(info, data)
    return dest


def _poisoned_program(source: Path, sentinel: Path) -> bytes:
    """The program with a symbolic size that torch hands to sympy's eval: it plants a file."""
    program = json.loads(read(source, "models/model.json"))
    size = program["graph_module"]["graph"]["tensor_values"]["x"]["sizes"][0]["as_expr"]
    size["expr_str"] = f"__import__('pathlib').Path({str(sentinel)!r}).touch() or s77"
    return json.dumps(program).encode()


def _repeated_program(source: Path, dest: Path, sentinel: Path, poisoned: int) -> Path:
    """`poisoned` copies of models/model.json that run code, then the clean one (which is
    the copy Python's zipfile reads)."""
    bad = _poisoned_program(source, sentinel)
    entries: list[tuple[zipfile.ZipInfo | str, bytes]] = []
    for info, data in _entries(source):
        if info.filename.endswith("/models/model.json"):
            entries += [(info.filename, bad)] * poisoned
        entries.append((info.filename, data))
    return _write(dest, entries)


def test_a_repeated_program_entry_is_refused_before_torch_can_load_another_copy(
    encoder_pt2: Path, tmp_path: Path
) -> None:
    sentinel = tmp_path / "pwned"
    bad = _poisoned_program(encoder_pt2, sentinel)
    # torch's reader (miniz: binary search over the sorted directory) finds a poisoned copy
    # for some counts of copies; Python's zipfile always reads the last, clean one
    reaches_torch = []
    for poisoned in range(1, 6):
        path = _repeated_program(encoder_pt2, tmp_path / f"rep{poisoned}.pt2", sentinel, poisoned)
        if PT2ArchiveReader(str(path)).read_bytes("models/model.json") == bad:
            reaches_torch.append(path)
    assert reaches_torch, "torch's zip reader no longer picks a repeated entry; revisit"
    for path in reaches_torch:
        with pytest.raises(UnsafeProgram, match="more than once"):
            inspect_pt2(path)
        with pytest.raises(UnsafeProgram, match="more than once"):
            load_program(path, torch.device("cpu"), tmp_path)
    assert not sentinel.exists()


def test_names_repeated_in_another_case_are_refused(encoder_pt2: Path, tmp_path: Path) -> None:
    entries: list[tuple[zipfile.ZipInfo | str, bytes]] = list(_entries(encoder_pt2))
    entries.append(("encoder/Archive_Format", b"pt2"))  # miniz compares names without case
    with pytest.raises(UnsafeProgram, match="more than once"):
        inspect_pt2(_write(tmp_path / "case.pt2", entries))


def _renamed_in_place(path: Path, old: bytes, new: bytes) -> Path:
    """Rewrites a name in the local header and the central directory (same length), as an
    attacker writing raw bytes would; zipfile cannot write such names itself."""
    assert len(old) == len(new)
    data = path.read_bytes()
    assert data.count(old) == 2
    path.write_bytes(data.replace(old, new))
    return path


def test_a_name_with_a_nul_byte_is_refused(encoder_pt2: Path, tmp_path: Path) -> None:
    path = rewrite(encoder_pt2, tmp_path / "nul.pt2", {}, {"byteorderXX": b"little"})
    _renamed_in_place(path, b"encoder/byteorderXX", b"encoder/byteorder\x00X")
    with pytest.raises(UnsafeProgram, match="NUL"):
        inspect_pt2(path)


def test_a_symbolic_link_entry_is_refused(encoder_pt2: Path, tmp_path: Path) -> None:
    entries: list[tuple[zipfile.ZipInfo | str, bytes]] = []
    for info, data in _entries(encoder_pt2):
        if info.filename.endswith("data/weights/weight_0"):
            info.create_system = 3
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            data = b"../../node.key"
        entries.append((info, data))
    with pytest.raises(UnsafeProgram, match="symbolic link"):
        inspect_pt2(_write(tmp_path / "link.pt2", entries))


@pytest.mark.parametrize(
    "name", ["/etc/cron.d/x", "encoder/../../x", "encoder\\..\\x", "encoder/data/\u00e9"]
)
def test_names_that_escape_or_are_not_plain_are_refused(
    encoder_pt2: Path, tmp_path: Path, name: str
) -> None:
    entries: list[tuple[zipfile.ZipInfo | str, bytes]] = list(_entries(encoder_pt2))
    entries.append((name, b"x"))
    with pytest.raises(UnsafeProgram):
        inspect_pt2(_write(tmp_path / "escape.pt2", entries))


def _central_entry(data: bytes, name: bytes) -> int:
    """Offset of the central directory record for `name`."""
    at = data.find(b"PK\x01\x02")
    while at >= 0:
        name_len = struct.unpack_from("<H", data, at + 28)[0]
        if data[at + 46 : at + 46 + name_len] == name:
            return at
        at = data.find(b"PK\x01\x02", at + 4)
    raise AssertionError(f"{name!r} is not in the central directory")


def test_sizes_declared_beyond_the_archive_are_refused(encoder_pt2: Path, tmp_path: Path) -> None:
    path = tmp_path / "big.pt2"
    data = bytearray(encoder_pt2.read_bytes())
    at = _central_entry(bytes(data), b"encoder/data/weights/weight_3")
    struct.pack_into("<II", data, at + 20, 0x7FFF_0000, 0x7FFF_0000)  # compressed, plain
    path.write_bytes(bytes(data))
    with pytest.raises(UnsafeProgram, match="declares"):
        inspect_pt2(path)


def test_entries_that_share_their_bytes_are_refused(encoder_pt2: Path, tmp_path: Path) -> None:
    """Entries pointing at the same compressed bytes each passed the ratio check: a zip bomb
    of overlapping entries unpacked to far more than any one entry's limit."""
    path = tmp_path / "overlap.pt2"
    data = bytearray(encoder_pt2.read_bytes())
    first = _central_entry(bytes(data), b"encoder/data/weights/weight_2")
    again = _central_entry(bytes(data), b"encoder/data/weights/weight_3")
    offset, compressed, plain = (
        struct.unpack_from("<I", data, first + 42)[0],
        *struct.unpack_from("<II", data, first + 20),
    )
    struct.pack_into("<II", data, again + 20, compressed, plain)
    struct.pack_into("<I", data, again + 42, offset)  # weight_3 is weight_2's bytes
    path.write_bytes(bytes(data))
    with pytest.raises(UnsafeProgram, match="overlaps"):
        inspect_pt2(path)
    inspect_pt2(encoder_pt2)  # the program as exported has no such entries


def _edit_weights(source: Path, dest: Path, change: Callable[[dict[str, Any]], None]) -> Path:
    config = json.loads(read(source, "data/weights/model_weights_config.json"))
    change(config["config"])
    edit = {"data/weights/model_weights_config.json": json.dumps(config).encode()}
    return rewrite(source, dest, edit, {})


def _huge(config: dict[str, Any]) -> None:
    meta = next(iter(config.values()))["tensor_meta"]
    meta["sizes"] = [{"as_int": 1 << 20}, {"as_int": 1 << 20}]
    meta["strides"] = [{"as_int": 1 << 20}, {"as_int": 1}]


def _symbolic(config: dict[str, Any]) -> None:
    meta = next(iter(config.values()))["tensor_meta"]
    meta["sizes"][0] = {"as_expr": {"expr_str": "s0"}}


def test_weights_declaring_more_than_their_payload_holds_are_refused(
    encoder_pt2: Path, tmp_path: Path
) -> None:
    with pytest.raises(UnsafeProgram, match="declares a tensor of 4398046511104 bytes"):
        inspect_pt2(_edit_weights(encoder_pt2, tmp_path / "huge.pt2", _huge))
    with pytest.raises(UnsafeProgram, match="unreadable"):
        inspect_pt2(_edit_weights(encoder_pt2, tmp_path / "sym.pt2", _symbolic))
    # an empty payload: torch would allocate the declared size, zeroed, from nothing
    empty = rewrite(encoder_pt2, tmp_path / "empty.pt2", {"data/weights/weight_2": b""}, {})
    with pytest.raises(UnsafeProgram, match="its payload holds 0"):
        inspect_pt2(empty)


def _payload_config(pickled: str) -> bytes:
    meta = {"path_name": pickled, "is_param": False, "use_pickle": True, "tensor_meta": None}
    return json.dumps({"config": {"c": meta}}).encode()


class _Plant:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.path,))


@pytest.mark.parametrize(
    "slot",
    [
        "data/weights/weight_99",
        "data/constants/tensor_0",
        "data/constants/custom_obj_0",
        "data/constants/opaque_obj_0",
        "data/weights/model.pt",
        "data/constants/model.pt",
        "extra/notes.pkl",
    ],
)
def test_a_pickle_in_any_slot_is_refused(encoder_pt2: Path, tmp_path: Path, slot: str) -> None:
    sentinel = tmp_path / "pwned"
    payload = pickle.dumps(_Plant(sentinel))
    folder, _, leaf = slot.rpartition("/")
    edit: dict[str, bytes | None] = {}
    if folder in ("data/weights", "data/constants") and not leaf.endswith(".pt"):
        kind = folder.rpartition("/")[2]
        edit[f"{folder}/model_{kind}_config.json"] = _payload_config(leaf)
    bad = rewrite(encoder_pt2, tmp_path / "pickle.pt2", edit, {slot: payload})
    with pytest.raises(UnsafeProgram):
        inspect_pt2(bad)
    with pytest.raises(UnsafeProgram):
        load_program(bad, torch.device("cpu"), tmp_path)
    assert not sentinel.exists()


def test_pickled_sample_inputs_are_never_unpickled(encoder_pt2: Path, tmp_path: Path) -> None:
    sentinel = tmp_path / "pwned"
    edit: dict[str, bytes | None] = {"data/sample_inputs/model.pt": pickle.dumps(_Plant(sentinel))}
    bad = rewrite(encoder_pt2, tmp_path / "samples.pt2", edit, {})
    module, _ = load_program(bad, torch.device("cpu"), tmp_path)
    assert module(torch.randn(2, 3, 16, 16)).shape == (2, 10)
    assert not sentinel.exists()


def test_the_loaded_copy_is_built_from_the_checked_bytes(encoder_pt2: Path, tmp_path: Path) -> None:
    with zipfile.ZipFile(encoder_pt2) as archive:
        checked = check_archive(archive, encoder_pt2.stat().st_size)
        sanitized_copy(archive, checked, tmp_path / "copy.pt2")
    with zipfile.ZipFile(tmp_path / "copy.pt2") as copy:
        names = copy.namelist()
        assert len(names) == len({n.lower() for n in names})
        for name, data in checked.checked.items():
            assert copy.read(name) == data
        assert copy.read("encoder/data/sample_inputs/model.pt") == b""
        assert {i.filename for i in checked.payloads} <= set(names)


def test_a_huge_unbacked_symbol_index_is_refused(encoder_pt2: Path, tmp_path: Path) -> None:
    """torch counts unbacked symbols up to the largest index it is given (a busy loop)."""
    program = json.loads(read(encoder_pt2, "models/model.json"))
    program["range_constraints"]["u99999999999"] = {"min_val": 0, "max_val": 4}
    edit = {"models/model.json": json.dumps(program).encode()}
    with pytest.raises(UnsafeProgram, match="u99999999999"):
        inspect_pt2(rewrite(encoder_pt2, tmp_path / "loop.pt2", edit, {}))


def test_a_safetensors_header_longer_than_the_file_is_refused_before_it_is_read(
    tmp_path: Path,
) -> None:
    path = tmp_path / "liar.safetensors"
    path.write_bytes(struct.pack("<Q", 90 << 20) + b"{}")
    with pytest.raises(BadTensors, match="longer than the file"):
        read_header(path)
    with pytest.raises(BadTensors, match="longer than the file"):
        header_of(path.read_bytes(), "liar")
