"""Jobs whose inputs this coordinator no longer has. Without them no task can run: every
attempt failed INPUT_UNAVAILABLE and the job stalled until the wait limit. Such a job is
failed at once instead, naming the blob; its client keeps what ran, the tasks that did not
run cost nothing, and the rest of its held credit comes back (`Scheduler.finish`).

Two moments find them: a coordinator starting without an unfinished job's inputs
(`cli.fail_missing_inputs`), and a node failing an attempt INPUT_UNAVAILABLE while the
coordinator serves (`MissingInputs.unavailable`): a blob removed by an operator's
cleanup, a disk error or a bucket's lifecycle rule. A node's word alone fails nothing:
the coordinator looks in its own blob store, and a job whose inputs are there goes on
retrying as any other failure has it, so a rogue node cannot fail a client's job by
claiming an input is unavailable.
"""

import asyncio
import logging
import time
from collections.abc import Callable, Collection, Mapping

from sparegrid.coordinator.blobs import BlobStore
from sparegrid.coordinator.domain import Attempt, JobState
from sparegrid.coordinator.services.scheduler import ActiveJob, Scheduler
from sparegrid.coordinator.store.base import Store
from sparegrid.wire.codes import FailureCode

log = logging.getLogger("sparegrid.coordinator.inputs")
INPUT_UNAVAILABLE = FailureCode.INPUT_UNAVAILABLE
# a bucket is asked about one blob at most this often, however many nodes report it
RECHECK_SECONDS = 30.0
GONE_WHILE_SERVING = (
    "was removed from this coordinator's blob store ({where}) while the job ran (a "
    "cleanup, a disk error, a bucket's lifecycle rule), and nodes cannot fetch it. The "
    "tasks that did not run cost nothing; upload it and submit the job again"
)


def held(blobs: BlobStore, store: Store, digest: str) -> bool:
    """Whether this coordinator holds the blob: in its blob store, looked up afresh, or
    kept in the database (outputs sent inline with results, which later jobs may take as
    inputs). What both moments above ask of a local store."""
    return blobs.exists(digest) or store.get_inline_blob(digest) is not None


def lacking(inputs: Mapping[str, str], here: Callable[[str], bool]) -> list[tuple[str, str]]:
    """The (name, digest) of each input `here` does not find, by name."""
    return sorted((name, digest) for name, digest in inputs.items() if not here(digest))


def fail_job(
    scheduler: Scheduler, active: ActiveJob, missing: list[tuple[str, str]], why: str
) -> str:
    """Fails the job, its error naming the first missing input's blob followed by `why`
    (what happened to it, what to do); the error."""
    name, digest = missing[0]
    more = f" (and {len(missing) - 1} more input(s))" if len(missing) > 1 else ""
    error = f"INPUT_UNAVAILABLE: input {name!r} (blob {digest}){more} {why}"
    scheduler.finish(active, JobState.FAILED, error)
    return error


class MissingInputs:
    """Fails the jobs whose nodes report an input unavailable and whose input this
    coordinator's blob store does not have either. A local store is looked in at once (a
    stat); a bucket off the event loop, about a blob it had at most once per
    RECHECK_SECONDS, the jobs failed in a later group commit through `call` (the app's).
    A bucket that does not answer fails nothing: the tasks retry."""

    def __init__(self, scheduler: Scheduler, blobs: BlobStore) -> None:
        self.scheduler = scheduler
        self.store = scheduler.store
        self.blobs = blobs
        self.call: Callable[[Callable[[], None]], asyncio.Future[None]] | None = None
        self._asked: dict[str, float] = {}  # digest -> when the bucket was last asked

    def unavailable(self, attempts: list[Attempt]) -> None:
        """After failed attempts are settled: those failed INPUT_UNAVAILABLE send their
        jobs, if still running, to be looked at."""
        job_ids = {
            a.job_id
            for a in attempts
            if a.error_code == INPUT_UNAVAILABLE and a.job_id in self.scheduler.jobs
        }
        if not job_ids:
            return
        if not self.blobs.remote:
            try:
                self._fail(job_ids, lambda digest: held(self.blobs, self.store, digest))
            except OSError as exc:  # the disk cannot say: the tasks retry
                log.warning("could not look for inputs nodes reported unavailable: %s", exc)
            return
        now = time.monotonic()
        digests = {
            d
            for job_id in job_ids
            for d in self.scheduler.jobs[job_id].job.inputs.values()
            if now - self._asked.get(d, -RECHECK_SECONDS) >= RECHECK_SECONDS
            and self.store.get_inline_blob(d) is None
        }
        if not digests or self.call is None:
            return  # asked lately, held inline, or no app to fail the jobs in
        for digest in digests:
            self._asked[digest] = now
        if len(self._asked) > 10_000:  # long ago, most of them
            self._asked = {d: t for d, t in self._asked.items() if now - t < RECHECK_SECONDS}
        looked = asyncio.get_running_loop().run_in_executor(None, self._look, digests)
        looked.add_done_callback(lambda done: self._looked(job_ids, done))

    def _look(self, digests: Collection[str]) -> set[str]:
        """In a worker thread: the digests the bucket lacks."""
        return {d for d in digests if not self.blobs.exists(d)}

    def _looked(self, job_ids: set[str], done: "asyncio.Future[set[str]]") -> None:
        try:
            gone = done.result()
        except Exception as exc:  # the bucket did not answer: the tasks retry
            log.warning("could not look for inputs nodes reported unavailable: %s", exc)
            return
        for digest in gone:  # the next report of another job's asks again at once
            self._asked.pop(digest, None)
        if gone and self.call is not None:
            failing = self.call(lambda: self._fail(job_ids, lambda d: d not in gone))
            failing.add_done_callback(_logged)

    def _fail(self, job_ids: set[str], here: Callable[[str], bool]) -> None:
        for job_id in sorted(job_ids):
            active = self.scheduler.jobs.get(job_id)
            if active is None:
                continue  # ended meanwhile
            missing = lacking(active.job.inputs, here)
            if missing:
                why = GONE_WHILE_SERVING.format(where=self.blobs.where)
                log.error(
                    "job %s failed: %s", job_id, fail_job(self.scheduler, active, missing, why)
                )


def _logged(done: "asyncio.Future[None]") -> None:
    if not done.cancelled() and done.exception() is not None:
        log.warning("failing jobs whose inputs are gone did not commit: %s", done.exception())
