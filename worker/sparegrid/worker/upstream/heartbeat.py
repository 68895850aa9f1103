"""When a worker heartbeats: every interval while it holds a task (each heartbeat renews its
leases), and at the slower idle interval while it holds none (a heartbeat then only says
it is still there, and costs the coordinator as much as any other)."""

from sparegrid.v1 import worker_pb2

DEFAULT = 10.0  # seconds, when Welcome asks for nothing
SHORTEST = 0.01  # seconds: a coordinator asking for less (or a negative interval) gets this


class Cadence:
    """Ticks every `busy` seconds; `due` says whether a tick sends a heartbeat."""

    def __init__(self, busy: float, idle: float, now: float) -> None:
        self.busy = max(busy, SHORTEST)
        self.idle = max(idle, self.busy)
        self._sent = now

    @classmethod
    def asked(cls, welcome: worker_pb2.Welcome, configured: float | None, now: float) -> "Cadence":
        """The intervals the coordinator asked for in Welcome; `configured` (the worker's own
        setting) replaces both. A coordinator that names no idle interval gets the busy one."""
        if configured:
            return cls(configured, configured, now)
        busy = welcome.heartbeat_interval.ToTimedelta().total_seconds() or DEFAULT
        idle = welcome.idle_heartbeat_interval.ToTimedelta().total_seconds() or busy
        return cls(busy, idle, now)

    def due(self, holding: bool, now: float) -> bool:
        """At a tick: whether to heartbeat now (and if so, it counts as sent)."""
        # a tick late by a few ms must not wait a whole idle interval more
        if holding or now - self._sent >= self.idle - self.busy / 2:
            self._sent = now
            return True
        return False
