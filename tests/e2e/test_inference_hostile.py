"""Hostile inference inputs against a real coordinator: an input file whose safetensors
header lies about where its tensors lie is refused at submit, as the worker's own load
would refuse it after downloading it."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import save

from sparegrid.sdk import InvalidArgumentError
from tests.e2e.helpers import setup
from tests.inference.models import TwoHeads, export

pytestmark = pytest.mark.e2e


def test_inputs_whose_header_lies_are_refused_at_submit(cluster, tmp_path: Path) -> None:
    admin, client = setup(cluster, workers=0)
    program = export(TwoHeads(), (torch.randn(4, 8), torch.randn(4, 8)), tmp_path / "two.pt2")
    raw = save({"x": torch.randn(8, 8), "y": torch.randn(8, 8)})
    length = int.from_bytes(raw[:8], "little")
    header, data = raw[8 : 8 + length], raw[8 + length :]
    # y's header names x's bytes: both tensors read the same 256 bytes, and y's are left
    # over at the end (safetensors refuses to load it: "invalid offset")
    y_at = header.index(b'"y"')
    lying = header[:y_at] + header[y_at:].replace(b"[256,512]", b"[0,256]  ")
    assert len(lying) == len(header) and lying != header
    files = {
        "lying": raw[:8] + lying + data,
        "trailing": raw + b"\0" * 32,  # bytes after the last tensor
    }
    model = client.upload(program)
    for name, body in files.items():
        path = tmp_path / f"{name}.safetensors"
        path.write_bytes(body)
        with pytest.raises(InvalidArgumentError) as caught:
            client.infer(program, path, batch_size=4)
        assert caught.value.code == "BAD_INPUTS", name
        # straight to the coordinator, past the SDK's checks
        with pytest.raises(InvalidArgumentError) as caught:
            client.submit(
                "inference",
                {"batch_size": 4},
                {"model": model, "shard_000000": client.upload(body)},
            )
        assert caught.value.code == "BAD_INPUTS", name
        assert "overlap" in caught.value.message or "after the last tensor" in (
            caught.value.message
        )
    assert client.list_jobs() == [] and client.account().balance == 1000
    assert admin.ledger_check().balanced
