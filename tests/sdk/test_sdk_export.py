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
