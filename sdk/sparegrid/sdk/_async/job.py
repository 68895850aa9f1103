"""Job handles: a snapshot of a job plus the client it came from, to refresh, wait, verify."""

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Protocol

from sparegrid.sdk._async.frames import write_render_results
from sparegrid.sdk.backend import AsyncHookResult, acallback
from sparegrid.sdk.config import PathLike
from sparegrid.sdk.errors import InvalidArgumentError
from sparegrid.sdk.jobview import JobView
from sparegrid.sdk.models import JobSnapshot, VerifyReport
from sparegrid.sdk.render import latest_frame_ref
from sparegrid.sdk.resultfiles import RenderFiles, check_output_dir, staged, write_index
from sparegrid.sdk.results import TaskResult, verify_all


class AsyncJobClient(Protocol):
    """What a job handle needs of its client."""

    async def get_job(self, job_id: str) -> "AsyncJob": ...
    def watch(self, job_id: str, *, timeout: float | None = None) -> AsyncIterator["AsyncJob"]: ...
    async def results(self, job_id: str) -> list[TaskResult]: ...
    async def cancel(self, job_id: str) -> "AsyncJob": ...
    async def coordinator_key(self) -> bytes: ...
    async def download(self, digest: str, dest: PathLike) -> Path: ...


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

    async def write_frames(self, out_dir: PathLike, *, force: bool = False) -> RenderFiles:
        """Writes a render job's results into `out_dir` as `sparegrid job results -o DIR`
        does: frame_NNNN.ext, a tiled still's tiles under tiles/ stitched into still.ext
        once every tile is in, receipts/ and results.json. Each receipt is verified and each
        output digest-checked; a task that does not check out is in `.problems`, and the
        others are still written. `out_dir` must be new or empty unless `force`; a failure
        (the coordinator gone, say) leaves nothing behind."""
        if self.kind != "render":
            raise InvalidArgumentError(
                "NOT_A_RENDER",
                f"job {self.id} is a {self.kind} job; write_frames writes render jobs' "
                "frames (`results()` gives any job's outputs)",
            )
        out = Path(out_dir)
        check_output_dir(out, force)
        items = await self.results()
        with staged(out) as stage:
            written = await write_render_results(self._client, items, stage, out)
            write_index(stage, self.id, written.entries)
        return written

    async def cancel(self) -> "AsyncJob":
        cancelled = await self._client.cancel(self.id)
        self._snapshot = cancelled.snapshot
        return self
