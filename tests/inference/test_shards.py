"""Shards against a program's signature, and the inference kind's plan, without workers."""

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save, save_file

from sparegrid.coordinator.domain import FileRef
from sparegrid.coordinator.errors import CoordinatorError
from sparegrid.coordinator.kinds.inference import Inference
from sparegrid.wire.pt2 import inspect_pt2
from sparegrid.wire.tensors import BadTensors, check_batch_size, match_inputs, read_header
from tests.inference.models import TwoHeads, export


def header_of(tmp_path: Path, tensors: dict[str, torch.Tensor]) -> dict:
    path = tmp_path / "t.safetensors"
    save_file(tensors, str(path))
    return read_header(path)


def test_a_matching_shard_reports_its_samples(encoder_pt2: Path, tmp_path: Path) -> None:
    program = inspect_pt2(encoder_pt2)
    assert match_inputs(program, header_of(tmp_path, {"x": torch.randn(7, 3, 16, 16)}), "s") == 7


@pytest.mark.parametrize(
    ("tensors", "why"),
    [
        (
            {"x": torch.randn(2, 3, 16, 16, dtype=torch.float64)},
            "'x' is F64, the program wants F32",
        ),
        ({"x": torch.randn(2, 3, 16)}, "'x' has 3 dimensions, not 4"),
        ({"x": torch.randn(2, 4, 16, 16)}, "'x' dimension 1 is 4, the program fixes it at 3"),
        ({"image": torch.randn(2, 3, 16, 16)}, "input names differ"),
    ],
)
def test_mismatches_show_both_signatures(
    encoder_pt2: Path, tmp_path: Path, tensors: dict, why: str
) -> None:
    program = inspect_pt2(encoder_pt2)
    with pytest.raises(BadTensors) as caught:
        match_inputs(program, header_of(tmp_path, tensors), "shard_000000")
    message = str(caught.value)
    assert why in message
    assert "the program takes (x: F32[" in message and "the shard holds (" in message


def test_inputs_must_agree_on_samples(tmp_path: Path) -> None:
    program = inspect_pt2(
        export(TwoHeads(), (torch.randn(2, 8), torch.randn(2, 8)), tmp_path / "p.pt2")
    )
    with pytest.raises(BadTensors, match="disagree on the number of samples"):
        match_inputs(
            program, header_of(tmp_path, {"x": torch.randn(3, 8), "y": torch.randn(4, 8)}), "s"
        )


def test_batch_sizes_must_fit_the_program(encoder_pt2: Path, tmp_path: Path) -> None:
    dynamic = inspect_pt2(encoder_pt2)  # batch in [1, 4096]
    check_batch_size(dynamic, 64, 1000)
    with pytest.raises(BadTensors, match="outside the program's batch range"):
        check_batch_size(dynamic, 5000, 10_000)
    fixed = torch.export.export(TwoHeads(), (torch.randn(4, 8), torch.randn(4, 8)))
    torch.export.save(fixed, tmp_path / "fixed.pt2")
    static = inspect_pt2(tmp_path / "fixed.pt2")
    check_batch_size(static, 4, 12)
    with pytest.raises(BadTensors, match="exactly 4"):
        check_batch_size(static, 4, 10)


def test_malformed_safetensors_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(b"\x01")
    with pytest.raises(BadTensors, match="too short"):
        read_header(path)
    header = json.dumps({"x": {"dtype": "F32", "shape": [4], "data_offsets": [0, 64]}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 16)
    with pytest.raises(BadTensors, match="do not fit the file"):
        read_header(path)
    path.write_bytes(struct.pack("<Q", 5) + b"nope!")
    with pytest.raises(BadTensors, match="header is not JSON"):
        read_header(path)


class Files:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.count = 0

    def add(self, name: str, data: bytes) -> FileRef:
        self.count += 1
        digest = f"{self.count:064x}"
        (self.root / digest).write_bytes(data)
        return FileRef(name, digest, len(data))

    def path(self, digest: str) -> Path:
        return self.root / digest


def test_the_plan_is_one_task_per_shard_with_work_from_flops(
    encoder_pt2: Path, tmp_path: Path
) -> None:
    files = Files(tmp_path)
    inputs = {"model": files.add("model", encoder_pt2.read_bytes())}
    for i, n in enumerate((8, 8, 3)):
        inputs[f"shard_{i:06d}"] = files.add(
            f"shard_{i:06d}", save({"x": torch.randn(n, 3, 16, 16)})
        )
    plans = Inference().plan({"batch_size": 4, "precision": "bf16"}, inputs, files)
    assert [p.params["samples"] for p in plans] == [8, 8, 3]
    assert [p.inputs[1].name for p in plans] == ["shard_000000", "shard_000001", "shard_000002"]
    assert all(p.params["precision"] == "bf16" and p.work >= 1 for p in plans)


@pytest.mark.parametrize(
    ("params", "names", "message"),
    [
        ({"precision": "fp8"}, ["shard_000000"], "'precision' must be one of"),
        ({"batch_size": 0}, ["shard_000000"], "'batch_size' must be between"),
        ({"temperature": 1}, ["shard_000000"], "unknown parameter"),
        ({}, [], "no input shards"),
        ({}, ["shard_000001"], "numbered from 0 without gaps"),
        ({}, ["inputs"], "'model' and 'shard_NNNNNN'"),
    ],
)
def test_bad_plans_say_what_is_wrong(
    encoder_pt2: Path, tmp_path: Path, params: dict, names: list[str], message: str
) -> None:
    files = Files(tmp_path)
    inputs = {"model": files.add("model", encoder_pt2.read_bytes())}
    for name in names:
        inputs[name] = files.add(name, save({"x": torch.randn(2, 3, 16, 16)}))
    with pytest.raises(CoordinatorError) as caught:
        Inference().plan(params, inputs, files)
    assert message in caught.value.message
