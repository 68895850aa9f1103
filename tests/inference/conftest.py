from pathlib import Path

import pytest
import torch

from tests.inference.models import Encoder, export


@pytest.fixture(scope="session")
def encoder() -> Encoder:
    torch.manual_seed(0)
    return Encoder().eval()


@pytest.fixture(scope="session")
def encoder_pt2(encoder: Encoder, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("programs") / "encoder.pt2"
    return export(encoder, (torch.randn(4, 3, 16, 16),), path)
