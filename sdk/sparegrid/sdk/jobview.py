"""The read-only side of a job handle: attributes of the latest snapshot, shared by
`Job` and `AsyncJob`."""

from datetime import datetime

from sparegrid.sdk.models import JobCounts, JobSnapshot, JobState, WebhookDelivery


class JobView:
    """Read-only attributes of the latest snapshot."""

    _snapshot: JobSnapshot

    @property
    def snapshot(self) -> JobSnapshot:
        return self._snapshot

    @property
    def id(self) -> str:
        return self._snapshot.id

    @property
    def kind(self) -> str:
        return self._snapshot.kind

    @property
    def name(self) -> str:
        return self._snapshot.name

    @property
    def state(self) -> JobState:
        return self._snapshot.state

    @property
    def counts(self) -> JobCounts:
        return self._snapshot.counts

    @property
    def cost_held(self) -> int:
        return self._snapshot.cost_held

    @property
    def cost_spent(self) -> int:
        return self._snapshot.cost_spent

    @property
    def cost_refunded(self) -> int:
        return self._snapshot.cost_refunded

    @property
    def error(self) -> str:
        return self._snapshot.error

    @property
    def waiting(self) -> str:
        """Why queued tasks cannot run on the nodes connected now; "" when they can."""
        return self._snapshot.waiting

    @property
    def webhook(self) -> WebhookDelivery | None:
        """Its webhook's call once it ended (state, attempts, last error, next attempt);
        None without a webhook, before it ended, or from a list or watch: `refresh()`."""
        return self._snapshot.webhook

    @property
    def still(self) -> str:
        """A render job tiling one still: the file `write_frames` (`sparegrid job results`)
        stitches its tiles into, e.g. "still.png"; "" for any other job."""
        return self._snapshot.still

    @property
    def created_at(self) -> datetime | None:
        return self._snapshot.created_at

    @property
    def finished_at(self) -> datetime | None:
        return self._snapshot.finished_at

    @property
    def eta(self) -> float | None:
        """Seconds left at the pace so far; None before a task is done or once final."""
        return self.snapshot.eta()

    @property
    def finished(self) -> bool:
        return self._snapshot.finished

    def __repr__(self) -> str:
        c = self.counts
        return (
            f"{type(self).__name__}(id={self.id!r}, kind={self.kind!r}, state={self.state.value}, "
            f"done={c.done}/{c.total})"
        )
