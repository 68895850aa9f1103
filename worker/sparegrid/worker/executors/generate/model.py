"""Builds a language model from its files: config.json and safetensors, never code.

The architecture must be one of sparegrid.wire.llm.ARCHITECTURES; the class is taken
from transformers by that name (never `AutoModel` with `trust_remote_code`), and weights
load from safetensors only. The inputs are gathered as links in a folder of their own so
that transformers reads them as a model folder, with nothing else in it.
"""

import json
import os
import tempfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never the network (the sandbox has none)
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch
import transformers

from sparegrid.wire.llm import ARCHITECTURES, WEIGHTS, BadModel, check_config
from sparegrid.wire.tensors import read_header
from sparegrid.worker.executors.base import BAD_INPUT, ExecutorError

transformers.utils.logging.disable_progress_bar()  # type: ignore[no-untyped-call]

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Loaded:
    model: Any
    config: dict[str, Any]
    nbytes: int


def load(inputs: dict[str, Path], precision: str, device: torch.device) -> Loaded:
    try:
        config = check_config(inputs["config"].read_bytes())
    except BadModel as exc:
        raise ExecutorError(BAD_INPUT, str(exc)) from None
    cls = getattr(transformers, config["architectures"][0])
    assert config["architectures"][0] in ARCHITECTURES
    folder = Path(tempfile.mkdtemp(prefix="model-"))
    # absolute: a worker run with a relative --data-dir hands relative paths, which would
    # resolve inside the temporary folder
    (folder / "config.json").symlink_to(inputs["config"].absolute())
    weights = sorted(n for n in inputs if n.startswith(WEIGHTS))
    if len(weights) == 1:
        (folder / "model.safetensors").symlink_to(inputs[weights[0]].absolute())
    else:
        index: dict[str, str] = {}
        for n, name in enumerate(weights):
            file = f"model-{n:05d}-of-{len(weights):05d}.safetensors"
            (folder / file).symlink_to(inputs[name].absolute())
            index.update({t: file for t in read_header(inputs[name])})
        text = json.dumps({"metadata": {}, "weight_map": index})
        (folder / "model.safetensors.index.json").write_text(text)
    model = cls.from_pretrained(
        folder,
        dtype=DTYPES[precision],
        local_files_only=True,
        use_safetensors=True,
        attn_implementation="sdpa",  # torch's own; never a kernel fetched from elsewhere
    )
    model.to(device).eval()
    nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    return Loaded(model, config, nbytes)


class Models:
    """Loaded models by (weights digests, precision), at most `max_bytes`, LRU out."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[str, ...], Loaded] = OrderedDict()

    def get(self, inputs: dict[str, Path], precision: str, device: torch.device) -> Loaded:
        key = (
            *(str(inputs[n]) for n in sorted(inputs) if n == "config" or n.startswith(WEIGHTS)),
            precision,
        )
        entry = self._entries.get(key)
        if entry is None:
            entry = load(inputs, precision, device)
            self._entries[key] = entry
            while len(self._entries) > 1 and self._used() > self.max_bytes:
                self._entries.popitem(last=False)
        self._entries.move_to_end(key)
        return entry

    def _used(self) -> int:
        return sum(e.nbytes for e in self._entries.values())
