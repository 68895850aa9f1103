"""Events an operator follows: jobs, task failures, disputes, quarantines, bans, credit,
signups.

A service emits an event inside the transaction that makes it true: the event is written
with it (and undone with it). Within a group commit (`deferred`) the events of all its
calls are written together, once, just before it commits; elsewhere each at once. Once the group commit holding it is durable, the app calls
`published()`, which writes each as one JSON line to the `sparegrid.events` log and hands
it to the listeners (the metrics). The store keeps the latest `keep` of them for
`sparegrid admin events` and the dashboard.
"""

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from sparegrid.coordinator.clock import Clock
from sparegrid.coordinator.domain import Event, new_id
from sparegrid.coordinator.store.base import Store

log = logging.getLogger("sparegrid.events")

MESSAGE_LIMIT = 500  # characters of a message; reasons come from nodes and clients


class EventKind(StrEnum):
    JOB_SUBMITTED = "job.submitted"
    JOB_FINISHED = "job.finished"  # succeeded, failed or cancelled: data["state"]
    TASK_FAILED = "task.failed"  # an attempt failed or ran out; data["final"] if the task did
    DISPUTE = "dispute"  # results of a task disagreed: data["state"] open, settled, failed
    QUARANTINE = "node.quarantined"
    BAN = "node.banned"
    REINSTATE = "node.reinstated"
    APPROVE = "node.approved"
    LEDGER = "ledger"  # a grant, escrow, refund, stake or slash (payments are metrics)
    SIGNUP = "account.signup"  # an account created with an invitation code
    # what an admin changed: data["action"] (account.create, key.rotate, node.ban, ...),
    # data["by"] the admin account, data["target"] what it acted on
    ADMIN = "admin"


def kinds_named(name: str) -> list[str] | None:
    """The event kinds `name` stands for: one kind, or a family (`node`: node.banned,
    node.quarantined, ...); None if it names none."""
    kinds = [k.value for k in EventKind if k.value == name or k.value.startswith(name + ".")]
    return kinds or None


def kind_names() -> str:
    """Every kind and family, for an error that names what may be asked for."""
    names = {k.value for k in EventKind} | {k.value.split(".")[0] for k in EventKind}
    return ", ".join(sorted(names))


@dataclass
class EventConfig:
    keep: int = 100_000  # events kept in the store; older ones are trimmed


Listener = Callable[[Event], None]


class Events:
    def __init__(self, store: Store, clock: Clock, config: EventConfig | None = None) -> None:
        self.store = store
        self.clock = clock
        self.config = config or EventConfig()
        self.listeners: list[Listener] = []
        self._pending: list[Event] = []
        self._written = 0  # how many of the pending events the store has
        self._since_trim = 0
        self.deferred = False  # set by the app while a group commit runs

    def emit(
        self,
        kind: EventKind,
        message: str,
        *,
        job_id: str = "",
        task_id: str = "",
        node_id: str = "",
        account: str = "",
        **data: object,
    ) -> Event:
        """Records an event in the current transaction; published after it commits."""
        event = Event(
            new_id(),
            self.clock.now(),
            kind.value,
            message[:MESSAGE_LIMIT],
            job_id,
            task_id,
            node_id,
            account,
            dict(data),
        )
        self._pending.append(event)
        if not self.deferred:
            self.flush()
        return event

    def flush(self) -> None:
        """Writes the pending events the store does not have yet."""
        if self._written < len(self._pending):
            self.store.add_events(self._pending[self._written :])
            self._written = len(self._pending)

    def mark(self) -> int:
        """Where the pending events stand, to `undo` to when a savepoint rolls back."""
        return len(self._pending)

    def undo(self, mark: int) -> None:
        del self._pending[mark:]
        self._written = min(self._written, mark)

    def discard(self) -> None:
        """The transaction holding the pending events failed: they never happened."""
        self._pending.clear()
        self._written = 0

    def published(self) -> list[Event]:
        """Logs the events made durable since the last call and tells the listeners."""
        events, self._pending = self._pending, []
        self._written = 0
        logged = log.isEnabledFor(logging.INFO)
        for event in events:
            if logged:
                log.info("%s", to_json(event))
            for listener in list(self.listeners):
                listener(event)
        self._since_trim += len(events)
        return events

    def trim(self) -> int:
        """Deletes the oldest events past the bound, once enough new ones came in."""
        if self._since_trim < max(self.config.keep // 10, 1):
            return 0
        self._since_trim = 0
        return self.store.trim_events(self.config.keep)


def to_dict(event: Event) -> dict[str, object]:
    """The event as its JSON log line holds it (empty ids left out)."""
    out: dict[str, object] = {"id": event.id, "at": round(event.at, 3), "kind": event.kind}
    for key in ("job_id", "task_id", "node_id", "account"):
        value = getattr(event, key)
        if value:
            out[key] = value
    out["message"] = event.message
    if event.data:
        out["data"] = event.data
    return out


def to_json(event: Event) -> str:
    return json.dumps(to_dict(event), sort_keys=False, default=str)
