"""Job handles: a snapshot of a job plus the client it came from, to refresh, wait, verify."""

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import datetime
from typing import Protocol

from sparegrid.sdk.models import JobCounts, JobSnapshot, JobState, VerifyReport
from sparegrid.sdk.render import latest_frame_ref
from sparegrid.sdk.results import TaskResult, verify_all


class _JobView:
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
    def created_at(self) -> datetime | None:
        return self._snapshot.created_at

    @property
    def finished_at(self) -> datetime | None:
        return self._snapshot.finished_at

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


class SyncJobClient(Protocol):
    def get_job(self, job_id: str) -> "Job": ...
    def watch(self, job_id: str, *, timeout: float | None = None) -> Iterator["Job"]: ...
    def results(self, job_id: str) -> list[TaskResult]: ...
    def cancel(self, job_id: str) -> "Job": ...
    def coordinator_key(self) -> bytes: ...


class AsyncJobClient(Protocol):
    async def get_job(self, job_id: str) -> "AsyncJob": ...
    def watch(self, job_id: str, *, timeout: float | None = None) -> AsyncIterator["AsyncJob"]: ...
    async def results(self, job_id: str) -> list[TaskResult]: ...
    async def cancel(self, job_id: str) -> "AsyncJob": ...
    async def coordinator_key(self) -> bytes: ...


class Job(_JobView):
    """A job of a sync `Client`."""

    def __init__(self, client: SyncJobClient, snapshot: JobSnapshot) -> None:
        self._client = client
        self._snapshot = snapshot

    def refresh(self) -> "Job":
        self._snapshot = self._client.get_job(self.id).snapshot
        return self

    def wait(
        self, timeout: float | None = None, on_progress: Callable[["Job"], None] | None = None
    ) -> "Job":
        """Follows the job until it is final; DeadlineExceededError after `timeout` seconds."""
        if self.finished:
            return self
        for update in self._client.watch(self.id, timeout=timeout):
            self._snapshot = update.snapshot
            if on_progress:
                on_progress(self)
        return self

    def results(self) -> list[TaskResult]:
        return self._client.results(self.id)

    def verify(self) -> VerifyReport:
        """Checks every receipt: the node's signature and the coordinator's
        countersignature, against the coordinator key pinned on first use."""
        return verify_all(self.results(), coordinator_key=self._client.coordinator_key())

    def preview(self) -> tuple[str, bytes] | None:
        """A render job's latest finished frame: (name, image bytes), or None yet."""
        found = latest_frame_ref(self.results())
        return None if found is None else (found[1], found[0].output(found[1]))

    def cancel(self) -> "Job":
        self._snapshot = self._client.cancel(self.id).snapshot
        return self


class AsyncJob(_JobView):
    """A job of an `AsyncClient`: the same handle with awaitable methods."""

    def __init__(self, client: AsyncJobClient, snapshot: JobSnapshot) -> None:
        self._client = client
        self._snapshot = snapshot

    async def refresh(self) -> "AsyncJob":
        self._snapshot = (await self._client.get_job(self.id)).snapshot
        return self

    async def wait(
        self,
        timeout: float | None = None,
        on_progress: Callable[["AsyncJob"], Awaitable[None] | None] | None = None,
    ) -> "AsyncJob":
        if self.finished:
            return self
        async for update in self._client.watch(self.id, timeout=timeout):
            self._snapshot = update.snapshot
            if on_progress:
                outcome = on_progress(self)
                if outcome is not None:
                    await outcome
        return self

    async def results(self) -> list[TaskResult]:
        return await self._client.results(self.id)

    async def verify(self) -> VerifyReport:
        key = await self._client.coordinator_key()
        return verify_all(await self.results(), coordinator_key=key)

    async def preview(self) -> tuple[str, bytes] | None:
        """A render job's latest finished frame: (name, image bytes), or None yet."""
        found = latest_frame_ref(await self.results())
        return None if found is None else (found[1], await found[0].output_async(found[1]))

    async def cancel(self) -> "AsyncJob":
        self._snapshot = (await self._client.cancel(self.id)).snapshot
        return self
