"""Progress lines and tables a user reads: labelled, within 80 columns, with an ETA."""

import time
from datetime import UTC, datetime, timedelta

import pytest
from rich.console import Console

from sparegrid.cli import output
from sparegrid.sdk import Job, JobCounts, JobSnapshot, JobState


def job(
    state: JobState,
    total: int,
    succeeded: int,
    failed: int = 0,
    cancelled: int = 0,
    age: float = 3600.0,
) -> Job:
    counts = JobCounts(total=total, succeeded=succeeded, failed=failed, cancelled=cancelled)
    created = datetime.now(UTC) - timedelta(seconds=age)
    snapshot = JobSnapshot("f" * 32, "render", "", state, counts, 10, 5, created_at=created)
    return Job(None, snapshot)  # type: ignore[arg-type]


def test_a_progress_line_fits_80_columns_with_an_eta() -> None:
    big = job(JobState.RUNNING, 1_000_000, 250_000, age=36_000)
    line = output.progress_line(big, 36_000)
    assert len(line) <= 80, line
    assert line.startswith("ffffffffffff running   tasks 250000/1000000  elapsed 10h00m00s")
    assert line.endswith("eta 30h00m00s")  # three times as long again at this pace
    assert "eta -" in output.progress_line(job(JobState.RUNNING, 10, 0), 5)
    done = output.progress_line(job(JobState.SUCCEEDED, 10, 9, failed=1), 65)
    assert "(1 failed)" in done and "eta" not in done


def test_job_list_names_cancelled_and_failed_tasks() -> None:
    assert output.tasks_cell(job(JobState.CANCELLED, 1, 0, cancelled=1)) == "0/1, 1 cancelled"
    assert output.tasks_cell(job(JobState.FAILED, 5, 3, failed=1, cancelled=1)) == (
        "3/5, 1 failed, 1 cancelled"
    )
    console = Console(width=200, record=True)
    console.print(output.jobs_table([job(JobState.CANCELLED, 1, 0, cancelled=1)]))
    assert "0/1, 1 cancelled" in console.export_text()


def test_job_details_show_the_eta_while_it_runs() -> None:
    console = Console(width=100, record=True)
    console.print(output.job_details(job(JobState.RUNNING, 4, 1, age=60)))
    text = console.export_text()
    assert "eta" in text and "3m00s" in text


def test_wait_counts_elapsed_time_from_the_submit_in_progress_and_summary(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`job wait` started an hour after the submit: both say an hour, not a moment."""
    running = job(JobState.RUNNING, 10, 5, age=3600)
    began = time.monotonic()  # when `job wait` started
    with output.job_progress(running) as report:
        report(running)
    assert "elapsed 1h00m0" in capsys.readouterr().err
    console = Console(width=100, record=True)
    console.print(output.job_summary(running, output.job_age(running, began)))
    assert "elapsed  1h00m0" in console.export_text()
