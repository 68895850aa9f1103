"""Activation fingerprints, in the spirit of TOPLOC (arXiv 2501.16007).

While it decodes, the generator records, every `every` generated tokens and at each
sequence's last token, the `k` entries of largest magnitude of the final hidden state (the
state whose logits chose that token): their indices and values. These are its commitment
to having run this model at this precision on these tokens. A checker runs one prefill
over prompt and claimed completion, reads the hidden states at the same positions, and
sends its own largest `2k` entries; the coordinator compares (comparators.py).
"""

from typing import Any

import torch


def positions(length: int, every: int) -> list[int]:
    """The generated tokens (0-based) a sequence of `length` is fingerprinted at."""
    chosen = list(range(every - 1, length, every))
    if length and (not chosen or chosen[-1] != length - 1):
        chosen.append(length - 1)
    return chosen


def top(hidden: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices and values of the k largest-magnitude entries of each row (float32)."""
    hidden = hidden.float()
    idx = hidden.abs().topk(min(k, hidden.shape[-1]), dim=-1).indices
    return idx, hidden.gather(-1, idx)


def encode(idx: torch.Tensor, val: torch.Tensor) -> dict[str, Any]:
    return {"idx": [int(i) for i in idx.tolist()], "val": [float(v) for v in val.tolist()]}
