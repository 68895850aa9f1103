"""Jittered exponential backoff for reconnecting to the coordinator."""

import random


class Backoff:
    """Jittered exponential backoff: initial, doubling up to `cap`, each delay in [d/2, d]."""

    def __init__(self, initial: float, cap: float, rng: random.Random | None = None) -> None:
        self._initial = initial
        self._cap = max(cap, initial)
        self._rng = rng or random.Random()
        self._failures = 0

    def reset(self) -> None:
        self._failures = 0

    def next_delay(self) -> float:
        ceiling = min(self._cap, self._initial * 2.0 ** min(self._failures, 62))
        self._failures += 1
        return ceiling * (0.5 + self._rng.random() / 2)
