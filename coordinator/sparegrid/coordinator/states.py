"""Every job, task and attempt state transition, in one place."""

from sparegrid.coordinator.domain import Attempt, AttemptState, Job, JobState, Task, TaskState

_JOB: dict[JobState, set[JobState]] = {
    JobState.SUBMITTING: {JobState.QUEUED},
    JobState.QUEUED: {JobState.RUNNING, JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED},
    JobState.RUNNING: {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED},
    JobState.SUCCEEDED: set(),
    JobState.FAILED: set(),
    JobState.CANCELLED: set(),
}

_TASK: dict[TaskState, set[TaskState]] = {
    TaskState.QUEUED: {
        TaskState.LEASED,
        TaskState.SUCCEEDED,
        TaskState.FAILED,  # a late result ended its verification without agreement
        TaskState.CANCELLED,
    },
    # back to QUEUED when a lease expires or an attempt fails with retries left
    TaskState.LEASED: {
        TaskState.QUEUED,
        TaskState.SUCCEEDED,
        TaskState.FAILED,
        TaskState.CANCELLED,
    },
    TaskState.SUCCEEDED: set(),
    TaskState.FAILED: set(),
    TaskState.CANCELLED: set(),
}

_ATTEMPT: dict[AttemptState, set[AttemptState]] = {
    AttemptState.RUNNING: {
        AttemptState.SUCCEEDED,
        AttemptState.FAILED,
        AttemptState.EXPIRED,
        AttemptState.CANCELLED,
        AttemptState.REJECTED,
    },
    # a late result for an expired lease still counts if the task is not done yet
    AttemptState.EXPIRED: {AttemptState.SUCCEEDED, AttemptState.CANCELLED},
    # a result held for comparison that its replicas then outvoted
    AttemptState.SUCCEEDED: {AttemptState.REJECTED},
    AttemptState.FAILED: set(),
    AttemptState.CANCELLED: set(),
    AttemptState.REJECTED: set(),
}

FINAL_JOB_STATES = frozenset(s for s, nxt in _JOB.items() if not nxt)
FINAL_TASK_STATES = frozenset(s for s, nxt in _TASK.items() if not nxt)


class InvalidTransition(Exception):
    pass


def _check(what: str, old: str, new: str, allowed: set[str]) -> None:
    if new not in allowed:
        raise InvalidTransition(f"{what} cannot go from {old} to {new}")


def move_job(job: Job, state: JobState) -> None:
    _check(f"job {job.id}", job.state, state, set(_JOB[job.state]))
    job.state = state


def move_task(task: Task, state: TaskState) -> None:
    _check(f"task {task.id}", task.state, state, set(_TASK[task.state]))
    task.state = state


def move_attempt(attempt: Attempt, state: AttemptState) -> None:
    _check(f"attempt {attempt.id}", attempt.state, state, set(_ATTEMPT[attempt.state]))
    attempt.state = state


# A final job (failed or cancelled), and those of its tasks that did not succeed, go back
# to the queue only one way: `job retry --failed`.
_REOPENED_JOB = frozenset({JobState.FAILED, JobState.CANCELLED})
_REOPENED_TASK = frozenset({TaskState.FAILED, TaskState.CANCELLED})


def reopen_job(job: Job) -> None:
    if job.state not in _REOPENED_JOB:
        raise InvalidTransition(
            f"job {job.id} is {job.state}: only a failed or cancelled job is retried"
        )
    job.state = JobState.QUEUED


def reopen_task(task: Task) -> None:
    if task.state not in _REOPENED_TASK:
        raise InvalidTransition(
            f"task {task.id} is {task.state}: only a failed or cancelled task is retried"
        )
    task.state = TaskState.QUEUED
