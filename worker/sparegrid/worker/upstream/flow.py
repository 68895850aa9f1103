"""Flow control: how many more assignments the worker invites per device.

The protocol calls an invitation `Credit` (a count of assignments the coordinator may
send); it has nothing to do with the money-like credit in the ledger.

The worker keeps `prefetch` tasks per device in hand or invited: held (fetching, queued or
running) plus credit granted in this session and not yet used. A new session starts with no
credit, so its first grant is the prefetch window less what the worker still holds.
"""

from collections.abc import Iterable


class FlowWindow:
    def __init__(self, prefetch: int, devices: Iterable[int]) -> None:
        self._prefetch = prefetch
        self._outstanding = dict.fromkeys(devices, 0)

    def reset(self) -> None:
        """A new session: the coordinator knows of no credit yet."""
        for device in self._outstanding:
            self._outstanding[device] = 0

    def revoke(self, device: int) -> None:
        """The device paused: the coordinator was told its credit is now 0."""
        if device in self._outstanding:
            self._outstanding[device] = 0

    def assigned(self, device: int) -> None:
        if self._outstanding.get(device, 0) > 0:
            self._outstanding[device] -= 1

    def top_up(self, device: int, held: int) -> int:
        """How much credit to grant now so held + outstanding reaches the window."""
        if device not in self._outstanding:
            return 0
        grant = max(self._prefetch - held - self._outstanding[device], 0)
        if grant < max(1, self._prefetch // 4):
            return 0  # a deep window is refilled in quarters: fewer, larger assignments
        self._outstanding[device] += grant
        return grant
