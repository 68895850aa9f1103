"""Submits and retries that never stall the coordinator.

Everything the coordinator does runs on one event loop, and each group commit holds it
while it runs. A submit plans its job on a worker thread (a kind may read a large input to
plan it). A job of more tasks than fit in one short step is written a slice per group
commit: its row first, hidden (SUBMITTING), then its tasks, then one transaction holds its
cost in escrow and shows it. Heartbeats, results and other clients are served between the
slices; no client hears of the job, and nothing is charged, before it is whole and durable.
A submit that fails half-way (its account spent the credit meanwhile) deletes what it
wrote, a slice at a time; one cut short by a stop is deleted at the next start. A retry of
a large job queues its tasks again a slice at a time while the job stays ended (so they
count as cancelled), then holds their cost and queues the job in one transaction; one that
fails or is cut short has them swept back to cancelled.

From the moment a submit finds its inputs stored until its job is shown (or given up), it
holds them: the storage sweep (services/sweeper.py) keeps a blob a submit holds, which no
job in the store names yet. A retry does the same from the check that finds its job's
inputs still stored (else it is refused, changing nothing) until it ends.
"""

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

from sparegrid.coordinator.domain import Account, Job, Task
from sparegrid.coordinator.errors import CoordinatorError, ErrorKind
from sparegrid.coordinator.services.jobs import Draft, Jobs, JobSpec, Planned
from sparegrid.coordinator.services.retries import Reopened, Retries
from sparegrid.coordinator.store.base import Store

log = logging.getLogger("sparegrid.coordinator.submit")

T = TypeVar("T")


class GroupCommits(Protocol):
    """The App's group commit."""

    @property
    def last_group_seconds(self) -> float:
        """How long the last group commit held the event loop, its commit included."""

    def call(self, fn: Callable[[], T], /) -> Awaitable[T]:
        """Runs `fn` in the next group commit; resolves once it is durable."""


class Pacer:
    """How many items the next step takes, so that the group commit that runs a step holds
    the event loop for about `target` seconds, its commit included: the size doubles while
    steps are quick and shrinks after a slow one."""

    def __init__(
        self, start: int = 500, target: float = 0.01, low: int = 50, high: int = 50_000
    ) -> None:
        self.size = start
        self.target = target
        self.low = low
        self.high = high

    def adjust(self, seconds: float) -> None:
        """The last step's group commit took `seconds`."""
        if seconds < self.target / 2:
            self.size = min(self.size * 2, self.high)
        elif seconds > self.target:
            self.size = max(int(self.size * self.target / seconds), self.low)


class Submitter:
    """Runs submits for the servicer: at most one per idempotency key at a time."""

    def __init__(
        self, jobs: Jobs, retries: Retries, store: Store, commits: GroupCommits, step: int
    ) -> None:
        self._jobs = jobs
        self._retries = retries
        self._store = store
        self._commits = commits
        self._call = commits.call
        self.step = step  # a job of more tasks is written in slices
        self._running: dict[tuple[str, str], tuple[JobSpec, asyncio.Task[Job]]] = {}
        self._tasks: set[asyncio.Task[Job]] = set()  # every submit and retry in progress
        self._retrying: set[str] = set()  # job ids
        self._held: Counter[str] = Counter()  # input digests of submits and retries in flight

    async def submit(self, account: Account, spec: JobSpec) -> Job:
        """The job, once it is durable; an identical submit while one is being written
        waits for it, a different one under the same key is refused."""
        key = (account.id, spec.idempotency_key)
        running = self._running.get(key) if spec.idempotency_key else None
        if running is not None:
            first, task = running
            self._jobs.check_same(spec, first, "a job still being submitted")
            return await asyncio.shield(task)
        draft = await self.prepare(account, spec)
        if isinstance(draft, Job):
            return draft
        # the submit goes on if its caller goes away: the job may be durable by then
        task = asyncio.create_task(self._submit(draft))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        # held from the check that found them (prepare, on this turn of the loop) until the
        # job is shown: until then no job in the store names them
        inputs = [ref.digest for ref in draft.inputs.values()]
        self._held.update(inputs)
        task.add_done_callback(lambda _: self._release(inputs))
        if spec.idempotency_key:
            self._running[key] = (spec, task)
            task.add_done_callback(lambda _: self._running.pop(key, None))
        return await asyncio.shield(task)

    def retrying(self) -> set[str]:
        """Ids of the jobs whose large retry is being written."""
        return set(self._retrying)

    def held(self) -> set[str]:
        """Input digests of submits and retries in flight: checked as stored, no live
        job's yet."""
        return set(self._held)

    def _release(self, digests: list[str]) -> None:
        for digest in digests:
            self._held[digest] -= 1
            if self._held[digest] <= 0:
                del self._held[digest]

    async def prepare(self, account: Account, spec: JobSpec) -> Draft | Job:
        """Jobs.prepare, the inputs looked up first in a worker thread where a look is a
        request to a bucket (so that prepare, on the event loop, sends none)."""
        if self._jobs.remote_blobs:
            await asyncio.to_thread(self._jobs.look_up_inputs, spec.inputs)
        return self._jobs.prepare(account, spec)

    async def retry(self, account: Account, job_id: str) -> Job:
        """Retries an ended job whose inputs are all still stored; a large one's tasks are
        queued again a slice per group commit, then one transaction holds their cost and
        queues the job. The inputs are held from the check until the retry ends, as a
        submit's are: until the job is queued again, no live job names them."""
        job = self._retries.retryable(account, job_id)
        if self._jobs.remote_blobs:
            await asyncio.to_thread(self._jobs.look_up_inputs, job.inputs)
            job = self._retries.retryable(account, job_id)  # it may have changed meanwhile
        if job.id in self._retrying:
            raise CoordinatorError(
                ErrorKind.PRECONDITION,
                "JOB_NOT_RETRYABLE",
                f"job {job.id} is being retried already",
            )
        inputs = self._retries.retry_inputs(account, job)  # no await between: a sweep's step
        self._held.update(inputs)  # runs whole, before the check or after the hold
        if job.task_count - max(job.tasks_succeeded, 0) <= self.step:
            try:
                return await self._call(lambda: self._retries.retry(account, job_id))
            finally:
                self._release(inputs)
        task = asyncio.create_task(self._retry_large(account, job))
        self._retrying.add(job.id)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(lambda _: self._retrying.discard(job.id))
        task.add_done_callback(lambda _: self._release(inputs))
        return await asyncio.shield(task)

    async def _retry_large(self, account: Account, job: Job) -> Job:
        reopened, start, pacer = Reopened(), 0, Pacer()
        try:
            while start < job.task_count:

                def step(first: int = start, size: int = pacer.size) -> int:
                    held = set(reopened.inputs)
                    stop = self._retries.reopen(account, job, first, first + size, reopened)
                    self._held.update(reopened.inputs - held)
                    return stop

                start = await self._call(step)
                pacer.adjust(self._commits.last_group_seconds)
            return await self._call(lambda: self._retries.publish_retry(account, job, reopened))
        except asyncio.CancelledError:
            raise  # stopping: the next start sweeps the tasks it queued back
        except BaseException:
            await self._call(lambda: self._retries.abandon_retry(job))
            raise
        finally:
            self._release(list(reopened.inputs))

    async def stop(self) -> None:
        """Cancels submits in progress; what they wrote is deleted at the next start."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _submit(self, draft: Draft) -> Job:
        def plan() -> tuple[Planned, list[Task] | None]:
            planned = self._jobs.plan(draft)
            small = planned.job.task_count <= self.step
            return planned, planned.tasks() if small else None

        planned, tasks = await asyncio.to_thread(plan)
        if tasks is not None:
            return await self._call(lambda: self._jobs.commit(planned, tasks))
        return await self._submit_large(planned)

    async def _submit_large(self, planned: Planned) -> Job:
        job = planned.job
        began = time.monotonic()
        await self._call(lambda: self._jobs.begin(planned))
        try:
            written, pacer = 0, Pacer()
            while written < job.task_count:

                def write(start: int = written, size: int = pacer.size) -> int:
                    part = planned.tasks(start, start + size)
                    self._store.add_tasks(part)
                    return len(part)

                written += await self._call(write)
                pacer.adjust(self._commits.last_group_seconds)
            published = await self._call(lambda: self._jobs.publish(planned))
        except asyncio.CancelledError:
            raise  # stopping: the next start deletes the hidden job
        except BaseException:
            await self._discard(job)
            raise
        log.info(
            "job %s: %d tasks written in %.1f s", job.id, job.task_count, time.monotonic() - began
        )
        return published

    async def _discard(self, job: Job) -> None:
        pacer, start = Pacer(), 0
        while start < job.task_count:

            def delete(first: int = start, size: int = pacer.size) -> int:
                self._jobs.discard(job.id, first, first + size)
                return size

            start += await self._call(delete)
            pacer.adjust(self._commits.last_group_seconds)
