"""Builds a language model from its files: config.json and safetensors, never code.

The architecture must be one of sparegrid.wire.llm.ARCHITECTURES; the class is taken
from transformers by that name (never `AutoModel` with `trust_remote_code`), and weights
load from safetensors only. The inputs are gathered as links in a folder of their own so
that transformers reads them as a model folder, with nothing else in it.
"""

import json
import os
import tempfile
from collections import Counter, OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never the network (the sandbox has none)
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch
import transformers

from sparegrid.wire.llm import ARCHITECTURES, WEIGHTS, BadModel, check_config, check_sizes
from sparegrid.wire.tensors import BadTensors, TensorHeader, read_header
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
    weights = sorted(n for n in inputs if n.startswith(WEIGHTS))
    try:
        headers = {name: read_header(inputs[name]) for name in weights}
        tensors = {t: h for found in headers.values() for t, h in found.items()}
        check_sizes(config, tensors)
    except (BadModel, BadTensors) as exc:
        raise ExecutorError(BAD_INPUT, str(exc)) from None
    folder = Path(tempfile.mkdtemp(prefix="model-"))
    # absolute: a worker run with a relative --data-dir hands relative paths, which would
    # resolve inside the temporary folder
    (folder / "config.json").symlink_to(inputs["config"].absolute())
    _check_weights(cls, folder, tensors)
    if len(weights) == 1:
        (folder / "model.safetensors").symlink_to(inputs[weights[0]].absolute())
    else:
        index: dict[str, str] = {}
        for n, name in enumerate(weights):
            file = f"model-{n:05d}-of-{len(weights):05d}.safetensors"
            (folder / file).symlink_to(inputs[name].absolute())
            index.update({t: file for t in headers[name]})
        text = json.dumps({"metadata": {}, "weight_map": index})
        (folder / "model.safetensors.index.json").write_text(text)
    model, info = cls.from_pretrained(
        folder,
        dtype=DTYPES[precision],
        local_files_only=True,
        use_safetensors=True,
        attn_implementation="sdpa",  # torch's own; never a kernel fetched from elsewhere
        output_loading_info=True,
    )
    gaps = {k: sorted(map(str, info[k]))[:3] for k in ("missing_keys", "mismatched_keys")}
    gaps = {k: v for k, v in gaps.items() if v}
    if gaps:  # filled with random values: results that differ from node to node
        raise ExecutorError(BAD_INPUT, f"the weights do not fit config.json: {gaps}")
    model.to(device).eval()
    nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    return Loaded(model, config, nbytes)


def _check_weights(cls: Any, folder: Path, tensors: dict[str, TensorHeader]) -> None:
    """Every parameter the config builds has a stored tensor of its shape, before anything
    is allocated: transformers allocates the model config.json describes and then fills it
    from the weights, so a config larger than its weights (a wider MLP, more heads) would
    take memory that the weights, and the job's memory estimate, do not show. The model is
    built on the meta device, which allocates nothing, and its shapes are compared with
    the stored ones (names may differ: transformers renames some on load)."""
    try:
        config = cls.config_class.from_pretrained(folder, local_files_only=True)
        with torch.device("meta"):
            skeleton = cls(config)
    except Exception as exc:  # a config transformers cannot build a model from
        raise ExecutorError(BAD_INPUT, f"config.json builds no model: {exc}") from None
    stored = Counter(t.shape for t in tensors.values())
    wrong = []
    for name, param in skeleton.named_parameters():
        shape = tuple(param.shape)
        if stored[shape] > 0:
            stored[shape] -= 1
        else:
            wrong.append(f"{name} {list(shape)}")
    if wrong:
        more = f" (and {len(wrong) - 3} more)" if len(wrong) > 3 else ""
        raise ExecutorError(
            BAD_INPUT,
            f"the weights do not fit config.json: no stored tensor for {', '.join(wrong[:3])}"
            f"{more}",
        )


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
