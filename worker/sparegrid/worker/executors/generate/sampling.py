"""Seeded sampling that a checker can reproduce on any device.

A token is drawn by the Gumbel-max trick: the argmax of logits / temperature plus Gumbel
noise. The noise of a step is made on the CPU by numpy's Philox from (seed, custom_id,
step) alone, so it does not depend on the device, the batch or the order of prompts; a
checker that recomputes the logits of a claimed completion in one prefill recomputes its
noise too, and every claimed token must be the argmax (comparators.GenerateComparator).
Temperature 0 is greedy: no noise.
"""

import hashlib
from typing import Any

import numpy as np
import torch


def noise(seed: int, custom_id: str, step: int, vocab: int) -> "np.ndarray[Any, Any]":
    """Gumbel noise over the vocabulary for one step of one prompt (float32)."""
    key = hashlib.sha256(f"{seed}\0{custom_id}\0{step}".encode()).digest()
    bits = np.random.Generator(np.random.Philox(key=int.from_bytes(key[:16], "little")))
    uniform = bits.random(vocab, dtype=np.float64).clip(1e-12, 1 - 1e-12)
    gumbel: np.ndarray[Any, Any] = -np.log(-np.log(uniform))
    return gumbel.astype(np.float32)


def scores(
    logits: torch.Tensor, temperature: float, seed: int, ids: list[str], steps: list[int]
) -> torch.Tensor:
    """What the argmax is taken over, for rows `ids` at `steps`: logits (float32) as they
    are for greedy decoding, else divided by the temperature plus the row's noise."""
    logits = logits.float()
    if temperature <= 0:
        return logits
    vocab = logits.shape[-1]
    rows = np.stack([noise(seed, c, s, vocab) for c, s in zip(ids, steps, strict=True)])
    return logits / temperature + torch.from_numpy(rows).to(logits.device)
