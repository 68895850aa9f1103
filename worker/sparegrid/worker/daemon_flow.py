"""The worker daemon's flow control: Credit messages that invite assignments for a device
(not money), given while its policy lets it work and taken back, its tasks preempted, when
the policy stops it."""

import asyncio
import logging
from collections import deque

from sparegrid.v1 import worker_pb2
from sparegrid.wire.clock import Clock
from sparegrid.wire.codes import FailureCode
from sparegrid.worker.config import WorkerConfig
from sparegrid.worker.node.devices import DeviceInfo
from sparegrid.worker.policy import Decision
from sparegrid.worker.policy.monitor import DeviceMonitor
from sparegrid.worker.slots.attempts import TaskManager
from sparegrid.worker.upstream.flow import FlowWindow
from sparegrid.worker.upstream.session import Session

_log = logging.getLogger("sparegrid.worker")
PREEMPTED = FailureCode.PREEMPTED.value  # by this node's policy: re-queued, not held against it
OVER_VRAM_SHARE = "OVER_VRAM_SHARE"  # the task needs more GPU memory than this node lends


class WorkerFlow:
    """The Worker's Credit grants; the Worker holds the state named here."""

    config: WorkerConfig
    devices: tuple[DeviceInfo, ...]
    _clock: Clock
    _monitor: DeviceMonitor
    _tasks: TaskManager
    _flow: FlowWindow
    _session: Session | None
    _draining: bool
    _durations: dict[int, deque[float]]
    _last_done: dict[int, float]
    _owed: set[int]

    def decision(self, device: int) -> Decision | None:
        """What the policy says about a device now."""
        return self._monitor.decisions.get(device)

    def _grant(self, device: int) -> None:
        if self._draining or self._session is None or not self._may_lease(device):
            return
        count = self._flow.top_up(device, self._tasks.held(device), self._clock.monotonic())
        if count:
            credit = worker_pb2.Credit(device_index=device, count=count)
            self._session.post(worker_pb2.WorkerMessage(credit=credit))

    def _grant_all(self) -> None:
        for device in self.devices:
            self._grant(device.index)

    def _may_lease(self, device: int) -> bool:
        """The policy lets the device work, and a task can finish before its window closes."""
        decision = self.decision(device)
        if decision is None or not decision.may_work:
            return False
        return decision.window_left >= self.task_estimate(device)

    def task_estimate(self, device: int) -> float:
        """How long the next task may take: the longest of the last few, or the setting."""
        recent = self._durations.get(device)
        return max(recent) if recent else self.config.task_estimate

    def _revoke(self, device: int) -> None:
        self._flow.revoke(device)
        if self._session is not None:
            credit = worker_pb2.Credit(device_index=device, count=0, reset=True)
            self._session.post(worker_pb2.WorkerMessage(credit=credit))

    def _on_policy(self, device: int, decision: Decision) -> None:
        """The monitor saw a device change: lease again, or stop its work now."""
        if decision.may_work and not decision.over_vram:
            self._grant(device)
            return
        if not decision.may_work:
            self._revoke(device)
            reason = decision.mode.value + (f": {decision.reason}" if decision.reason else "")
            stopped = self._tasks.preempt(device, PREEMPTED, reason)
        else:  # the device may work, but its task uses more GPU memory than lent
            share = f"{self.config.max_vram:.0%}"
            reason = f"the task used more than the {share} of GPU memory this node lends"
            stopped = self._tasks.preempt(device, OVER_VRAM_SHARE, reason)
        if stopped:
            _log.warning(
                "device %d: stopped %d task(s) (%s)",
                device,
                len(stopped),
                reason,
                extra={"device": device, "attempts": stopped},
            )

    def _timed(self, device: int, since: float | None) -> None:
        """What the task cost the device: from its arrival, or the previous task's end if
        later (a busy device's time between results), for the flow window."""
        now = self._clock.monotonic()
        if since is not None:
            self._flow.finished(device, now - max(since, self._last_done.get(device, since)))
        self._last_done[device] = now

    def _released(self, device: int) -> None:
        """A task on `device` ended; grant its credit back once this burst of outcomes is in."""
        if not self._owed:
            asyncio.get_running_loop().call_soon(self._grant_owed)
        self._owed.add(device)

    def _grant_owed(self) -> None:
        owed, self._owed = self._owed, set()
        for device in sorted(owed):
            self._grant(device)
