"""Following a job in the terminal until it is final: progress, then a summary."""

import time

from rich.console import Console

from sparegrid.cli import output
from sparegrid.cli.common import short_reason
from sparegrid.sdk import DeadlineExceededError, Job, JobState, UnavailableError


def follow(job: Job, timeout: float | None, summary: Console | None = None) -> int:
    """Progress until final, then the summary, both counting the time since the job was
    submitted. 0 succeeded, 1 failed/cancelled (or the coordinator stopped answering),
    2 timeout."""
    summary = summary or output.out()
    start = time.monotonic()
    try:
        with output.job_progress(job) as on_progress:
            job.wait(timeout=timeout, on_progress=on_progress)
    except DeadlineExceededError as exc:
        if exc.code != "WAIT_TIMEOUT":
            raise
        output.show(output.job_summary(job, output.job_age(job, start)), summary)
        output.error(exc.message, exc.code)
        still_running(job)
        return 2
    except KeyboardInterrupt:
        output.error(f"interrupted; job {job.id} goes on without you")
        still_running(job)
        return 130
    except UnavailableError as exc:  # not the address hint of a first call: it answered
        reason = short_reason(exc.message)
        output.error(
            f"the coordinator stopped answering while job {job.id} ran: {reason}", exc.code
        )
        output.hint(
            "the coordinator keeps the job: once it answers again, "
            f"`sparegrid job wait {job.id}` follows it again"
        )
        return 1
    output.show(output.job_summary(job, output.job_age(job, start)), summary)
    return 0 if job.state is JobState.SUCCEEDED else 1


def still_running(job: Job) -> None:
    output.hint(
        f"`sparegrid job wait {job.id}` follows it again; `sparegrid job cancel {job.id}` stops it"
    )
