from pathlib import Path

import pytest
from tokenizers import Tokenizer

from tests.generate.models import build, train_tokenizer


@pytest.fixture(scope="session")
def tokenizer() -> Tokenizer:
    return train_tokenizer()


@pytest.fixture(scope="session")
def llama(tmp_path_factory: pytest.TempPathFactory, tokenizer: Tokenizer) -> Path:
    return build(tmp_path_factory.mktemp("models") / "llama", tokenizer=tokenizer)
