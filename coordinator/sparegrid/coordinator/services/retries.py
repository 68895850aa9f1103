"""Running the tasks of a failed or cancelled job again, on behalf of its account."""

import uuid
from dataclasses import dataclass, field

from sparegrid.coordinator.blobs import BlobStore
from sparegrid.coordinator.domain import (
    MAX_BALANCE,
    Account,
    Job,
    JobState,
    TaskState,
    client_account,
)
from sparegrid.coordinator.errors import CoordinatorError, ErrorKind, not_found
from sparegrid.coordinator.services.jobs import Jobs
from sparegrid.coordinator.services.ledger import Ledger
from sparegrid.coordinator.services.scheduler import Scheduler
from sparegrid.coordinator.states import reopen_job, reopen_task
from sparegrid.coordinator.store.base import Store

RETRYABLE = frozenset({JobState.FAILED, JobState.CANCELLED})
RETRYABLE_TASKS = frozenset({TaskState.FAILED, TaskState.CANCELLED})


@dataclass
class Reopened:
    """The tasks a retry queued again so far: their cost, and their indexes as ranges."""

    cost: int = 0
    count: int = 0
    runs: list[range] = field(default_factory=list)
    # inputs its tasks name beyond the job's own (none for the built-in kinds, which plan
    # tasks from the job's inputs), checked as stored: held while the retry is in flight
    inputs: set[str] = field(default_factory=set)

    def add(self, index: int, cost: int) -> None:
        self.cost += cost
        self.count += 1
        if self.runs and self.runs[-1].stop == index:
            self.runs[-1] = range(self.runs[-1].start, index + 1)
        else:
            self.runs.append(range(index, index + 1))


class Retries:
    def __init__(
        self, jobs: Jobs, store: Store, ledger: Ledger, scheduler: Scheduler, blobs: BlobStore
    ) -> None:
        self._jobs = jobs
        self._store = store
        self._ledger = ledger
        self._scheduler = scheduler
        self._blobs = blobs

    def retry(self, account: Account, job_id: str) -> Job:
        """Runs the tasks of a failed or cancelled job that did not succeed again, with
        their attempts counted afresh, holding their cost in escrow again; the results of
        the tasks that succeeded stay. In one go: `Submitter.retry` does a large job's in
        slices, with `reopen` and `publish_retry`."""
        job = self.retryable(account, job_id)
        self.retry_inputs(account, job)
        reopened = Reopened()
        try:
            self.reopen(account, job, 0, job.task_count, reopened)
            return self.publish_retry(account, job, reopened)
        except BaseException:  # the caller's transaction undoes the writes
            self.abandon_retry(job)
            raise

    def retryable(self, account: Account, job_id: str) -> Job:
        job = self._jobs.get(account, job_id)
        if job.id in self._scheduler.jobs or job.state not in RETRYABLE:
            state = (
                "already succeeded" if job.state is JobState.SUCCEEDED else f"is {job.state.value}"
            )
            raise CoordinatorError(
                ErrorKind.PRECONDITION,
                "JOB_NOT_RETRYABLE",
                f"job {job.id} {state}: only a failed or cancelled job is retried",
            )
        return job

    def retry_inputs(self, account: Account, job: Job) -> list[str]:
        """The job's inputs, each still stored and the account's; else refuses the retry
        (BLOB_NOT_FOUND, naming them), changing nothing: the sweep deletes a finished
        job's inputs --blob-retention after it ended, and tasks queued without them would
        only fail on every worker that tried to download them."""
        self._check_stored(account, job, sorted(job.inputs.items()))
        return sorted(set(job.inputs.values()))

    def _check_stored(self, account: Account, job: Job, named: list[tuple[str, str]]) -> None:
        missing = [
            f"{name!r} (blob {digest})"
            for name, digest in named
            if self._blobs.size(digest) is None or not self._store.blob_owned(digest, account.id)
        ]
        if missing:
            listed = ", ".join(missing[:10]) + (
                f" and {len(missing) - 10} more" if len(missing) > 10 else ""
            )
            raise not_found(
                "BLOB_NOT_FOUND",
                f"job {job.id} cannot be retried: its input(s) {listed} are no longer stored "
                "(a finished job's inputs are deleted --blob-retention after it ended); "
                "submit the job again with its inputs uploaded, or upload the same files "
                "again and retry",
            )

    def reopen(self, account: Account, job: Job, start: int, stop: int, reopened: Reopened) -> int:
        """Queues the tasks [start, stop) of an ended job that did not succeed again (in the
        store; the job stays ended until `publish_retry`, so they count as cancelled, and a
        stop before then has them swept back); returns `stop`. Refuses, before writing,
        a slice whose tasks name an input that is not stored (`retry_inputs`)."""
        self._scheduler.sweeps.pop(job.id, None)  # its queued tasks are queued again
        tasks = self._store.list_tasks(job.id, after_index=start - 1, limit=stop - start)
        # a queued task of a finished job is one its end has not swept to cancelled yet
        again = [t for t in tasks if t.state in RETRYABLE_TASKS or t.state == TaskState.QUEUED]
        known = set(job.inputs.values()) | reopened.inputs
        extra = {ref.digest: ref.name for t in again for ref in t.inputs if ref.digest not in known}
        if extra:
            self._check_stored(account, job, sorted((n, d) for d, n in extra.items()))
            reopened.inputs |= extra.keys()
        for task in again:
            if task.state != TaskState.QUEUED:
                reopen_task(task)
            task.attempts, task.error = 0, ""
            reopened.add(task.index, job.task_cost(task.work))
        self._store.update_tasks(again)
        return stop

    def publish_retry(self, account: Account, job: Job, reopened: Reopened) -> Job:
        """Holds the reopened tasks' cost and queues the job again, in one transaction."""
        if not reopened.count:
            raise CoordinatorError(
                ErrorKind.PRECONDITION, "NOTHING_TO_RETRY", f"every task of job {job.id} succeeded"
            )
        hold = reopened.cost * job.max_paid_results
        if job.cost_held + hold > MAX_BALANCE:  # every run's hold adds to its row's BIGINT
            raise CoordinatorError(
                ErrorKind.PRECONDITION,
                "JOB_NOT_RETRYABLE",
                f"job {job.id} has held {job.cost_held} credit over its runs; running "
                f"{reopened.count} task(s) again would hold {hold} more, past {MAX_BALANCE} "
                "(2^63 - 1), the most a job records: submit them as a new job",
            )
        balance = self._store.balance(client_account(account.name))
        if hold > balance:
            raise CoordinatorError(
                ErrorKind.PRECONDITION,
                "INSUFFICIENT_CREDIT",
                f"running {reopened.count} task(s) again costs up to {hold} credit, account "
                f"{account.name!r} holds {balance}",
            )
        reopen_job(job)
        job.error, job.finished_at, job.cost_held = "", None, job.cost_held + hold
        job.tasks_succeeded = job.tasks_failed = -1
        with self._store.transaction():
            self._store.update_job(job)
            self._store.clear_claims(job.id)  # its tasks' earlier failures count no more
            self._ledger.hold(job, account.name, hold, key=f":retry:{uuid.uuid4().hex}")
        # its tasks are read from the store as nodes take them (taskqueue.py)
        self._scheduler.add_job(job, account.name, [], unread=reopened.runs)
        self._scheduler.dispatch()
        return job

    def abandon_retry(self, job: Job) -> None:
        """A retry that did not complete: the tasks it queued again are swept back."""
        if job.id not in self._scheduler.jobs:
            self._scheduler.sweep_again(job)
