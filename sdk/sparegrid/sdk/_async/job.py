"""Job handles: a snapshot of a job plus the client it came from, to refresh, wait, verify."""

from collections.abc import AsyncIterator, Callable
from typing import Protocol

from sparegrid.sdk.backend import AsyncHookResult, acallback
from sparegrid.sdk.jobview import JobView
from sparegrid.sdk.models import JobSnapshot, VerifyReport
from sparegrid.sdk.render import latest_frame_ref
from sparegrid.sdk.results import TaskResult, verify_all


class AsyncJobClient(Protocol):
    """What a job handle needs of its client."""

    async def get_job(self, job_id: str) -> "AsyncJob": ...
    def watch(self, job_id: str, *, timeout: float | None = None) -> AsyncIterator["AsyncJob"]: ...
    async def results(self, job_id: str) -> list[TaskResult]: ...
    async def cancel(self, job_id: str) -> "AsyncJob": ...
    async def coordinator_key(self) -> bytes: ...


class AsyncJob(JobView):
    """A job of a client: the latest snapshot, and calls to follow and check it."""

    def __init__(self, client: AsyncJobClient, snapshot: JobSnapshot) -> None:
        self._client = client
        self._snapshot = snapshot

    async def refresh(self) -> "AsyncJob":
        fresh = await self._client.get_job(self.id)
        self._snapshot = fresh.snapshot
        return self

    async def wait(
        self,
        timeout: float | None = None,
        on_progress: Callable[["AsyncJob"], AsyncHookResult] | None = None,
    ) -> "AsyncJob":
        """Follows the job until it is final; DeadlineExceededError after `timeout` seconds."""
        if self.finished:
            return self
        async for update in self._client.watch(self.id, timeout=timeout):
            self._snapshot = update.snapshot
            if on_progress:
                await acallback(on_progress, self)
        return self

    async def results(self) -> list[TaskResult]:
        return await self._client.results(self.id)

    async def verify(self) -> VerifyReport:
        """Checks every receipt: the node's signature and the coordinator's
        countersignature, against the coordinator key pinned on first use."""
        key = await self._client.coordinator_key()
        return verify_all(await self.results(), coordinator_key=key)

    async def preview(self) -> tuple[str, bytes] | None:
        """A render job's latest finished frame: (name, image bytes), or None yet."""
        found = latest_frame_ref(await self.results())
        if found is None:
            return None
        result, name = found
        return name, await result.output_async(name)

    async def cancel(self) -> "AsyncJob":
        cancelled = await self._client.cancel(self.id)
        self._snapshot = cancelled.snapshot
        return self
