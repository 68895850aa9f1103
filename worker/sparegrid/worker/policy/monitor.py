"""Polls the device-state source and applies each device's policy on an injectable clock.

`poll()` reads every device once and returns the decisions; `run()` polls every
`interval` seconds and calls `on_change(index, decision)` whenever a device's mode (or its
VRAM overrun) changes, which is how the daemon learns to preempt and to lease again.
"""

import asyncio
import logging
from collections.abc import Callable, Iterable
from pathlib import Path

from sparegrid.wire.clock import Clock, local_time
from sparegrid.worker.policy.nvml import NvmlSource, NvmlUnavailable
from sparegrid.worker.policy.rules import Decision, DevicePolicy, Mode, PolicySettings
from sparegrid.worker.policy.state import DeviceState, DeviceStateSource, FileSource, IdleSource
from sparegrid.worker.policy.userinput import InputIdle, NoInput

_log = logging.getLogger("sparegrid.worker.policy")

OnChange = Callable[[int, Decision], None]


class DeviceMonitor:
    def __init__(
        self,
        source: DeviceStateSource,
        settings: PolicySettings,
        devices: Iterable[int],
        clock: Clock,
        interval: float = 0.25,
        our_pids: Callable[[], set[int]] = set,
        running: Callable[[int], bool] = lambda index: False,
        proc: Path = Path("/proc"),
        user_input: InputIdle | None = None,
    ) -> None:
        self.user_input: InputIdle = user_input or NoInput()
        self._input_idle: float | None = None
        self.source = source
        self.settings = settings
        self.policies = {i: DevicePolicy(i, settings) for i in devices}
        self.decisions: dict[int, Decision] = {i: Decision(Mode.WAITING) for i in self.policies}
        self._clock = clock
        self._interval = interval
        self._our_pids = our_pids
        self._running = running
        self._proc = proc
        self._wake = asyncio.Event()
        self.paused: Callable[[], str] = str  # the volunteer's pause in force, or ""
        self.disk_low: Callable[[], str] = str  # why the disk has too little room, or ""

    def poll(self) -> dict[int, Decision]:
        """Reads every device once, decides, and returns the decisions that changed."""
        self._input_idle = self.user_input.seconds_idle()
        return self.decide(self.source.read(self.policies))

    def decide(self, states: dict[int, DeviceState]) -> dict[int, Decision]:
        """Applies the rules to one reading of every device; returns what changed."""
        ours = self._our_pids()
        window_left = self.settings.windows.seconds_left(local_time(self._clock))
        mono = self._clock.monotonic()
        paused, disk_low = self.paused(), self.disk_low()
        changed = {}
        for index, policy in self.policies.items():
            decision = policy.evaluate(
                states[index],
                lambda pid: self._is_ours(pid, ours),
                self._running(index),
                mono,
                window_left,
                self._input_idle,
                paused,
                disk_low,
            )
            old = self.decisions[index]
            self.decisions[index] = decision
            if (old.mode, old.over_vram) != (decision.mode, decision.over_vram):
                changed[index] = decision
        return changed

    def _is_ours(self, pid: int, ours: set[int]) -> bool:
        """One of our children, or something they started (it stays in their session)."""
        if pid in ours:
            return True
        try:
            stat = (self._proc / str(pid) / "stat").read_text()
        except OSError:
            return False
        fields = stat.rpartition(")")[2].split()
        return len(fields) > 3 and int(fields[3]) in ours  # field 6 of stat: session id

    def poke(self) -> None:
        """Polls again now (e.g. a task just started, so our processes changed)."""
        self._wake.set()

    async def run(self, on_change: OnChange, after_poll: Callable[[], None] = lambda: None) -> None:
        """Polls until cancelled: `on_change` for each device whose mode changed, then
        `after_poll` (e.g. to lease again once a task can finish in the window)."""
        while True:
            try:
                # NVML calls block for milliseconds per GPU: read off the event loop
                states = await asyncio.to_thread(self.source.read, list(self.policies))
                self._input_idle = await asyncio.to_thread(self.user_input.seconds_idle)
                changed = self.decide(states)
            except Exception:  # a bad reading must not end the monitor; the next may do
                _log.exception("reading the devices failed")
                changed = {}
            for index, decision in changed.items():
                _log.info(
                    "device %d: %s%s",
                    index,
                    decision.mode.value,
                    f" ({decision.reason})" if decision.reason else "",
                    extra={"device": index, "mode": decision.mode.value},
                )
                on_change(index, decision)
            after_poll()
            self._wake.clear()
            sleeper = asyncio.ensure_future(self._clock.sleep(self._interval))
            waker = asyncio.ensure_future(self._wake.wait())
            try:
                await asyncio.wait((sleeper, waker), return_when=asyncio.FIRST_COMPLETED)
            finally:
                sleeper.cancel()
                waker.cancel()
                # not `suppress(CancelledError)` around each: that would also swallow a
                # cancel of this loop arriving meanwhile (e.g. a poke just before shutdown)
                await asyncio.gather(sleeper, waker, return_exceptions=True)

    def close(self) -> None:
        self.source.close()


def make_source(spec: str, cuda_uuids: dict[int, str]) -> tuple[DeviceStateSource, str]:
    """The source `spec` names (auto, nvml, none, file:PATH) and a note when "auto" could
    not use NVML for CUDA devices. Raises NvmlUnavailable when "nvml" was asked for."""
    if spec.startswith("file:"):
        return FileSource(Path(spec.removeprefix("file:"))), ""
    if spec == "none" or (spec == "auto" and not cuda_uuids):
        return IdleSource(), ""
    try:
        return NvmlSource(cuda_uuids), ""
    except NvmlUnavailable as exc:
        if spec == "nvml":
            raise
        return IdleSource(), f"owner detection is off: {exc}"
