"""An nn.Module given to `client.infer` is exported here, before anything is sent: inputs
that do not fit it are refused with one clear error, not torch's log of the failed trace."""

from pathlib import Path

import pytest
import torch

from sparegrid.sdk import Client, InvalidArgumentError


def test_inputs_that_do_not_fit_the_module_are_refused_quietly(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.GELU(), torch.nn.Linear(64, 4))
    # nothing listens here: the refusal comes before any call to a coordinator
    with (
        Client("127.0.0.1:9", api_key="sg_unused") as client,
        pytest.raises(InvalidArgumentError) as caught,
    ):
        client.infer(model, torch.randn(100, 15), batch_size=64)
    assert caught.value.code == "EXPORT_FAILED"
    assert "with inputs float32[64, 15]" in caught.value.message
    assert "shape and dtype" in caught.value.message
    err = capfd.readouterr().err
    assert "Traceback" not in err and "fake_tensor" not in err, err


def test_integer_inputs_to_a_float_model_are_refused_before_the_job_is_charged() -> None:
    """Tracing lets int64 inputs through a float Linear; the kernel refuses them only on
    the volunteer's machine, after the job was charged: the SDK reads the exported graph."""
    model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.GELU(), torch.nn.Linear(64, 4))
    with (
        Client("127.0.0.1:9", api_key="sg_unused") as client,
        pytest.raises(InvalidArgumentError) as caught,
    ):
        client.infer(model, torch.randint(0, 5, (100, 16)), batch_size=64)
    assert caught.value.code == "BAD_INPUTS"
    assert caught.value.message == (
        "the model cannot take inputs int64[64, 16]: its linear would get tensors of int64 and "
        "float32; give the inputs the dtype of the model's weights "
        "(e.g. inputs.float())"
    )


def test_a_model_file_that_is_no_archive_is_refused_as_not_exported(tmp_path: Path) -> None:
    """A text file, an ONNX model or a truncated download given as `model`: the newcomer is
    told it is not a torch.export program and how to make one, not that an 'entry' of it
    is unsafe."""
    junk = tmp_path / "model.pt2"
    junk.write_text("hello\n")
    with (
        Client("127.0.0.1:9", api_key="sg_unused") as client,
        pytest.raises(InvalidArgumentError) as caught,
    ):
        client.infer(junk, torch.randn(8, 16), batch_size=4)
    assert caught.value.code == "MODEL_NOT_EXPORTED"
    assert "not a torch.export program" in caught.value.message
    assert caught.value.message.endswith(
        'torch.export.save(torch.export.export(model, (example,)), "model.pt2")'
    )
