"""Job kinds: each checks a job's parameters at submit and splits it into tasks.

A worker runs the task side of a kind (its executor); the coordinator only plans, so a bad
job is refused at submit, before anything is charged or sent to a volunteer. A new kind is
a module here and one line in BUILTIN_KINDS.
"""

from sparegrid.coordinator.kinds.base import (
    JobKind,
    TaskPlan,
    check_job_work,
    decode_params,
    encode_params,
)
from sparegrid.coordinator.kinds.diagnostics import Checksum, Echo
from sparegrid.coordinator.kinds.generate import Generate
from sparegrid.coordinator.kinds.inference import Inference
from sparegrid.coordinator.kinds.render import Render

BUILTIN_KINDS: tuple[JobKind, ...] = (Echo(), Checksum(), Inference(), Render(), Generate())

__all__ = [
    "BUILTIN_KINDS",
    "JobKind",
    "TaskPlan",
    "check_job_work",
    "decode_params",
    "encode_params",
]
