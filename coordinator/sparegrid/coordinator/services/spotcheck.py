"""Spot checks: a rendered frame cross-checked by re-rendering one random crop of it.

When the adaptive policy wants a render task's result checked, the node of another owner
need not render the whole task again. It renders one crop, about 1/16 of the pixels of
one of the task's frames, chosen at random after the result came back; the coordinator
compares those pixels of the held frame with it (framecheck.py). A crop of a whole frame
is rendered as the frame was, with its denoiser, and 16 pixels wider on each side so that
the denoiser sees about what it saw in the frame; only the crop itself is compared. The
client pays, and the checker earns, the pixels x samples rendered.

A crop that disagrees does not decide alone: the task then runs whole on a node of a
third owner, and the owners that agree win (verification.py). Only PNG frames are spot
checked; EXR frames, compared bit for bit, are rendered whole again.
"""

import json
import random
from dataclasses import dataclass

from sparegrid.coordinator.domain import Job, Replica, Task
from sparegrid.coordinator.kinds import decode_params, render


@dataclass
class SpotConfig:
    share: float = 1 / 16  # of a task's pixels one spot check compares; 0: whole tasks
    margin: int = render.SPOT_MARGIN  # pixels rendered around a crop of a whole frame


class SpotChecks:
    def __init__(self, config: SpotConfig, rng: random.Random | None = None) -> None:
        self.config = config
        self.rng = rng or random.SystemRandom()

    def params_for(self, job: Job, task: Task, held: list[Replica]) -> bytes:
        """The params of the next attempt at a task whose results are `held` for a check:
        a crop for the first check of a single whole result, b"" (the task as it is)
        otherwise."""
        if job.kind != render.NAME or job.replicas != 0 or self.config.share <= 0:
            return b""
        if len(held) != 1 or held[0].params:
            return b""
        params = decode_params(task.params)
        crop = render.spot_check(params, self.rng, self.config.share, self.config.margin)
        return json.dumps(crop).encode() if crop is not None else b""


def work_of(task: Task, replica: Replica) -> int:
    """Work units a result stands for: its task's, or a spot check's crop."""
    return render.crop_work(decode_params(replica.params)) if replica.params else task.work
