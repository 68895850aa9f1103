"""Spot checks: a rendered frame cross-checked by re-rendering one random crop of it.

When the adaptive policy wants a render task's result checked, the node of another owner
need not render the whole task again. It renders one crop, about 1/16 of the pixels of
one of the task's frames, chosen at random after the result came back; the coordinator
compares those pixels of the held frame with it (framecheck.py). A crop of a whole frame
is rendered as the frame was, with its denoiser, and 16 pixels wider on each side so that
the denoiser sees about what it saw in the frame; only the crop itself is compared. The
client pays, and the checker earns, the pixels x samples rendered.

A generate result is checked the same way, by one prefill instead of a decode: the check's
params are the task's plus the completions the result claims, read from it here; the
checker returns its fingerprints and choices (tokencheck.py), and earns a token per
token it read.

A crop that disagrees does not decide alone: the task then runs whole on a node of a
third owner, and the owners that agree win (verification.py). Only PNG frames are spot
checked; EXR frames, compared bit for bit, are rendered whole again.
"""

import json
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass

from sparegrid.coordinator.domain import Job, Replica, Task
from sparegrid.coordinator.kinds import decode_params, generate, render
from sparegrid.coordinator.services import tokencheck

log = logging.getLogger("sparegrid.coordinator.spotcheck")


@dataclass
class SpotConfig:
    share: float = 1 / 16  # of a task's pixels one spot check compares; 0: whole tasks
    margin: int = render.SPOT_MARGIN  # pixels rendered around a crop of a whole frame


class SpotChecks:
    def __init__(
        self,
        config: SpotConfig,
        rng: random.Random | None = None,
        read: Callable[[str], bytes | None] = lambda digest: None,
    ) -> None:
        self.config = config
        self.rng = rng or random.SystemRandom()
        self.read = read  # a result's output by digest (None: not kept)

    def params_for(self, job: Job, task: Task, held: list[Replica]) -> bytes:
        """The params of the next attempt at a task whose results are `held` for a check:
        a crop for the first check of a single whole result, b"" (the task as it is)
        otherwise."""
        if job.replicas != 0 or self.config.share <= 0 or len(held) != 1 or held[0].params:
            return b""
        if job.kind == generate.NAME:
            return self._prefill(task, held[0])
        if job.kind != render.NAME:
            return b""
        params = decode_params(task.params)
        crop = render.spot_check(params, self.rng, self.config.share, self.config.margin)
        return json.dumps(crop).encode() if crop is not None else b""

    def _prefill(self, task: Task, held: Replica) -> bytes:
        """The task's params with the completions the held result claims; b"" (the task
        whole again) when they cannot be read."""
        ref = next((r for r in held.outputs if r.name == tokencheck.COMPLETIONS), None)
        data = (
            self.read(ref.digest) if ref is not None and ref.size <= tokencheck.MAX_READ else None
        )
        if data is None:
            return b""
        try:
            claimed = [list(map(int, row["tokens"])) for row in tokencheck.completions(data)]
        except (ValueError, KeyError, TypeError):
            log.info("task %s: a result's completions do not decode; run whole", task.id)
            return b""
        params = decode_params(task.params)
        params["claimed"] = claimed
        return json.dumps(params, separators=(",", ":")).encode()


def work_of(task: Task, replica: Replica) -> int:
    """Work units a result stands for: its task's, or a spot check's crop or prefill."""
    if not replica.params:
        return task.work
    params = decode_params(replica.params)
    return generate.check_work(params) if "claimed" in params else render.crop_work(params)
