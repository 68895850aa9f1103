"""A `torch.save`d state dict or pickled module given as the model is refused with the way
to export it, told from the archive's entry names or the first bytes: never unpickled."""

import pathlib
import pickle
import zipfile
from pathlib import Path

import pytest
import torch

from sparegrid.coordinator.domain import FileRef
from sparegrid.coordinator.errors import CoordinatorError
from sparegrid.coordinator.kinds.inference import Inference
from sparegrid.sdk import InvalidArgumentError
from sparegrid.sdk.inference import Plan
from sparegrid.wire.pt2 import inspect_pt2
from sparegrid.wire.pt2zip import NotExported
from tests.inference.models import TwoHeads

HINT = 'torch.export.save(torch.export.export(model, (example,)), "model.pt2")'


class Touch:
    """Unpickling this creates `path`: a payload that shows whether anything unpickled."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple:
        return pathlib.Path.touch, (self.path,)


def saved(kind: str, tmp_path: Path) -> Path:
    model = TwoHeads()
    path = tmp_path / f"{kind}.pt"
    if kind == "state-dict":
        torch.save(model.state_dict(), path)
    elif kind == "module":
        torch.save(model, path)
    elif kind == "legacy":
        torch.save(model.state_dict(), path, _use_new_zipfile_serialization=False)
    elif kind == "pickle":
        path.write_bytes(pickle.dumps(model.state_dict()))
    return path


@pytest.mark.parametrize("kind", ["state-dict", "module", "legacy", "pickle"])
def test_saved_weights_and_pickles_are_refused_with_the_way_to_export(
    kind: str, tmp_path: Path
) -> None:
    with pytest.raises(NotExported) as caught:
        inspect_pt2(saved(kind, tmp_path))
    assert "torch.save file (a state dict or a pickled nn.Module)" in str(caught.value)
    assert str(caught.value).endswith(HINT)


def test_the_check_never_unpickles_the_file(tmp_path: Path) -> None:
    live = pickle.dumps(Touch(tmp_path / "proof"))
    pickle.loads(live)
    assert (tmp_path / "proof").exists()  # the payload does run when unpickled

    sentinel = tmp_path / "unpickled"
    payload = pickle.dumps(Touch(sentinel))
    archive = tmp_path / "evil.pt"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("evil/data.pkl", payload)
        z.writestr("evil/version", "3\n")
    raw = tmp_path / "evil.pkl"
    raw.write_bytes(payload)
    for path in (archive, raw):
        with pytest.raises(NotExported):
            inspect_pt2(path)
        with pytest.raises(InvalidArgumentError) as caught:
            Plan(path, torch.randn(4, 8), 4, None, tmp_path)
        assert caught.value.code == "MODEL_NOT_EXPORTED"
    assert not sentinel.exists()


def test_the_sdk_refuses_a_state_dict_file_or_object_before_upload(tmp_path: Path) -> None:
    inputs = {"x": torch.randn(4, 8), "y": torch.randn(4, 8)}
    path = saved("state-dict", tmp_path)
    with pytest.raises(InvalidArgumentError) as caught:
        Plan(path, inputs, 4, None, tmp_path)
    assert caught.value.code == "MODEL_NOT_EXPORTED"
    assert caught.value.message.startswith(f"{path}: the model is a torch.save file")
    assert caught.value.message.endswith(HINT)

    with pytest.raises(InvalidArgumentError) as caught:
        Plan(TwoHeads().state_dict(), inputs, 4, None, tmp_path)
    assert caught.value.code == "MODEL_NOT_EXPORTED" and HINT in caught.value.message
    with pytest.raises(InvalidArgumentError) as caught:
        Plan(42, inputs, 4, None, tmp_path)
    assert caught.value.code == "BAD_MODEL" and "pass an nn.Module" in caught.value.message


class Blobs:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, digest: str) -> Path:
        return self.root / digest


def test_the_coordinator_refuses_it_at_submit(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    saved("module", tmp_path).rename(tmp_path / "m")
    save_file({"x": torch.randn(4, 8), "y": torch.randn(4, 8)}, str(tmp_path / "s"))
    inputs = {
        "model": FileRef("model", "m", (tmp_path / "m").stat().st_size),
        "shard_000000": FileRef("shard_000000", "s", (tmp_path / "s").stat().st_size),
    }
    with pytest.raises(CoordinatorError) as caught:
        Inference().plan({"batch_size": 4}, inputs, Blobs(tmp_path))
    assert caught.value.code == "MODEL_NOT_EXPORTED"
    assert caught.value.message.startswith("inference job: input 'model': the model is a")
    assert caught.value.message.endswith(HINT)
