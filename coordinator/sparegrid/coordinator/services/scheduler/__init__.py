"""Matches queued tasks to connected workers, leases them, and takes leases back.

The store is the source of truth; the scheduler keeps the active jobs' queues and the
connected sessions in memory so a dispatch pass is one store transaction for many tasks.
Sessions are reached through `SessionSink`, so this module never touches gRPC.
"""

from sparegrid.coordinator.services.scheduler.base import (
    NODE_LOST,
    OUT_OF_MEMORY,
    TASK_FAULTS,
    ActiveJob,
    Lease,
    NodeSession,
    SchedulerConfig,
    SessionSink,
    Sweep,
)
from sparegrid.coordinator.services.scheduler.dispatch import fits, misfit, version_tuple
from sparegrid.coordinator.services.scheduler.leases import LeasesPart

__all__ = [
    "NODE_LOST",
    "OUT_OF_MEMORY",
    "TASK_FAULTS",
    "ActiveJob",
    "Lease",
    "NodeSession",
    "Scheduler",
    "SchedulerConfig",
    "SessionSink",
    "Sweep",
    "fits",
    "misfit",
    "version_tuple",
]


class Scheduler(LeasesPart):
    """The scheduler: state (base.py), sessions, dispatch, queues and leases, each part
    built on the one before it."""
