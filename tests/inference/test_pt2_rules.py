"""The .pt2 allow-list: what a volunteer's worker agrees to load, checked without torch."""

import contextlib
import json
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from sparegrid.wire.pt2 import inspect_pt2
from sparegrid.wire.pt2zip import UnsafeProgram
from tests.inference.models import read, rewrite


def edit_program(source: Path, dest: Path, change: Callable[[dict[str, Any]], None]) -> Path:
    program = json.loads(read(source, "models/model.json"))
    change(program)
    return rewrite(source, dest, {"models/model.json": json.dumps(program).encode()}, {})


def test_a_plain_export_passes_and_its_signature_is_read(encoder_pt2: Path) -> None:
    info = inspect_pt2(encoder_pt2)
    assert [s.describe() for s in info.inputs] == ["x: F32[s77, 3, 16, 16]"] or (
        len(info.inputs) == 1 and info.inputs[0].shape[1:] == (3, 16, 16)
    )
    assert info.batch_symbol() is not None
    low, high = info.ranges[info.batch_symbol() or ""]
    assert (low, high) == (1, 4096)
    assert info.outputs[0].shape[1:] == (10,)
    assert all(op.startswith("torch.ops.aten.") or op.startswith("_operator.") for op in info.ops)


def test_flops_match_torch_flop_counter(encoder, encoder_pt2: Path) -> None:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        encoder(torch.randn(1, 3, 16, 16))
    counted = inspect_pt2(encoder_pt2).flops_per_sample
    assert counted == pytest.approx(counter.get_total_flops(), rel=0.05)


def _use_pickle(source: Path, dest: Path) -> Path:
    config = json.loads(read(source, "data/weights/model_weights_config.json"))
    first = next(iter(config["config"].values()))
    first["use_pickle"] = True
    edit = {"data/weights/model_weights_config.json": json.dumps(config).encode()}
    return rewrite(source, dest, edit, {})


def _guards(p: dict[str, Any]) -> None:
    p["guards_code"] = ["__import__('os').getcwd()"]


def _expr(p: dict[str, Any]) -> None:
    sizes = p["graph_module"]["graph"]["tensor_values"]["x"]["sizes"]
    sizes[0]["as_expr"]["expr_str"] = "__import__('os').getcwd()"


def _target(name: str) -> Callable[[dict[str, Any]], None]:
    def change(p: dict[str, Any]) -> None:
        p["graph_module"]["graph"]["nodes"][0]["target"] = name

    return change


def _custom_objects(p: dict[str, Any]) -> None:
    p["graph_module"]["graph"]["custom_obj_values"] = {"obj": {"name": "obj", "class_fqn": "x"}}


@pytest.mark.parametrize(
    ("build", "entry", "reason"),
    [
        (_use_pickle, "data/weights/weight_", "use_pickle"),
        (
            lambda s, d: rewrite(s, d, {}, {"data/constants/custom_obj_0": b"x"}),
            "custom_obj_0",
            "custom and opaque",
        ),
        (
            lambda s, d: rewrite(s, d, {}, {"data/aotinductor/model/model.so": b"\x7fELF"}),
            "aotinductor",
            "compiled code",
        ),
        (
            lambda s, d: rewrite(s, d, {}, {"data/weights/model.pt": b"x"}),
            "model.pt",
            "legacy pickled",
        ),
        (
            lambda s, d: rewrite(s, d, {}, {"extra/notes.txt": b"x"}),
            "extra/notes.txt",
            "not part of",
        ),
        (lambda s, d: edit_program(s, d, _guards), "models/model.json", "not a size check"),
        (lambda s, d: edit_program(s, d, _expr), "models/model.json", "calls '__import__'"),
        (
            lambda s, d: edit_program(s, d, _target("torch.hub.load")),
            "models/model.json",
            "torch.hub.load",
        ),
        (
            lambda s, d: edit_program(s, d, _target("torch.ops.mylib.run.default")),
            "models/model.json",
            "aten/prims only",
        ),
        (lambda s, d: edit_program(s, d, _custom_objects), "models/model.json", "custom objects"),
        (
            lambda s, d: edit_program(s, d, _target("torch.ops.aten.from_file.default")),
            "models/model.json",
            "no file access",
        ),
    ],
    ids=[
        "use-pickle",
        "custom-object",
        "aoti",
        "legacy-weights",
        "extra-file",
        "guards",
        "sympy-eval",
        "torch-callable",
        "custom-op",
        "torchbind",
        "file-read",
    ],
)
def test_refusals_name_the_entry(
    encoder_pt2: Path, tmp_path: Path, build: Callable[[Path, Path], Path], entry: str, reason: str
) -> None:
    bad = build(encoder_pt2, tmp_path / "bad.pt2")
    with pytest.raises(UnsafeProgram) as caught:
        inspect_pt2(bad)
    assert entry in str(caught.value) and reason in str(caught.value)


def test_archive_paths_that_escape_and_non_archives_are_refused(tmp_path: Path) -> None:
    evil = tmp_path / "evil.pt2"
    with zipfile.ZipFile(evil, "w") as z:
        z.writestr("m/../../etc/cron.d/x", b"x")
    with pytest.raises(UnsafeProgram, match="escapes"):
        inspect_pt2(evil)
    junk = tmp_path / "junk.pt2"
    junk.write_bytes(b"not a zip")
    with pytest.raises(UnsafeProgram, match=r"not a \.pt2"):
        inspect_pt2(junk)


def test_guard_code_really_runs_in_plain_torch_export_load(
    encoder_pt2: Path, tmp_path: Path
) -> None:
    """Why the rules exist: plain torch.export.load executes code from the archive."""
    sentinel = tmp_path / "pwned"
    code = f"open({str(sentinel)!r}, 'w').close() or True"

    def plant(p: dict[str, Any]) -> None:
        p["guards_code"] = [code]

    bad = edit_program(encoder_pt2, tmp_path / "bad.pt2", plant)
    with pytest.raises(UnsafeProgram):
        inspect_pt2(bad)
    assert not sentinel.exists()
    with contextlib.suppress(Exception):
        torch.export.load(bad).module()(torch.randn(2, 3, 16, 16))
    assert sentinel.exists(), "torch.export.load no longer runs guard code; revisit the rules"
