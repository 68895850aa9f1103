"""Formatting shared by the commands: consoles, tables, progress bars, error lines.

Results a script may read go to stdout; progress, hints and errors go to stderr.
"""

import contextlib
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

from rich import box
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from sparegrid.sdk import Job, SparegridError

PLAIN_INTERVAL = 5.0  # seconds between progress lines when stderr is not a terminal
PIPE_WIDTH = 160


def out() -> Console:
    """stdout; wide when piped, so tables of ids do not wrap."""
    console = Console(highlight=False)
    if not console.is_terminal:
        console = Console(highlight=False, width=max(console.width, PIPE_WIDTH))
    return console


def err() -> Console:
    return Console(stderr=True, highlight=False)


def error(message: str, code: str = "") -> None:
    """`error: <message> [CODE]` on stderr, one line."""
    suffix = f" [{code}]" if code else ""
    err().print(f"[bold red]error:[/] {message}{suffix}", markup=True, soft_wrap=True)


def sparegrid_error(exc: SparegridError) -> None:
    error(exc.message, exc.code)


def hint(message: str) -> None:
    err().print(f"[dim]hint:[/] {message}", soft_wrap=True)


def when(value: datetime | None) -> str:
    if value is None:
        return "-"
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def ago(value: datetime | None) -> str:
    if value is None:
        return "never"
    seconds = max((datetime.now(UTC) - value).total_seconds(), 0.0)
    return f"{duration(seconds)} ago"


def duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def table(*columns: str, title: str | None = None, fixed: dict[str, int] | None = None) -> Table:
    """A listing; the columns named in `fixed` (name -> width) never wrap (ids, states)."""
    t = Table(
        title=title,
        title_justify="left",
        header_style="bold",
        box=box.SIMPLE_HEAD,
        padding=(0, 1, 0, 0),
        show_edge=False,
    )
    for column in columns:
        width = (fixed or {}).get(column)
        if width:
            t.add_column(column, no_wrap=True, min_width=width)
        else:
            t.add_column(column, min_width=min(len(column), 6))
    return t


@contextlib.contextmanager
def transfer(label: str, total: int) -> Iterator[Callable[[int, int], None]]:
    """A byte progress bar on stderr; yields the callback the SDK calls."""
    console = err()
    if not console.is_terminal:
        yield lambda done, total: None
        console.print(f"{label}: {size(total)} done")
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(label, total=total or 1)
        yield lambda done, total: progress.update(task, completed=done, total=total or 1)


def _plain_reporter(console: Console) -> Callable[[Job], None]:
    last = {"at": 0.0, "done": -1}

    def report(job: Job) -> None:
        c = job.counts
        now = time.monotonic()
        if job.finished or (c.done != last["done"] and now - last["at"] >= PLAIN_INTERVAL):
            console.print(f"{job.id}: {job.state.value}, {c.done}/{c.total} tasks done")
            last.update(at=now, done=c.done)

    return report


@contextlib.contextmanager
def job_progress(job: Job) -> Iterator[Callable[[Job], None]]:
    """Tasks done/total: a bar on a terminal, plain periodic lines otherwise."""
    console = err()
    if not console.is_terminal:
        yield _plain_reporter(console)
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as progress:
        task = progress.add_task(f"{job.kind} {job.id}", total=job.counts.total or None)

        def update(j: Job) -> None:
            c = j.counts
            progress.update(task, completed=c.done, total=c.total or None)
            progress.update(task, description=f"{j.kind} {j.id} [dim]{j.state.value}[/]")

        update(job)
        yield update


def job_elapsed(job: Job, fallback: float) -> float:
    if job.created_at and job.finished_at:
        return (job.finished_at - job.created_at).total_seconds()
    return fallback


def job_summary(job: Job, elapsed: float) -> Table:
    c = job.counts
    t = Table(show_header=False, title=f"job {job.id}", title_justify="left", box=None)
    t.add_column(style="bold")
    t.add_column()
    t.add_row("state", job.state.value + (f" ({job.error})" if job.error else ""))
    t.add_row(
        "tasks", f"{c.succeeded} succeeded, {c.failed} failed, {c.cancelled} cancelled of {c.total}"
    )
    t.add_row(
        "credit", f"{job.cost_held} held, {job.cost_spent} spent, {job.cost_refunded} refunded"
    )
    t.add_row("elapsed", duration(elapsed))
    return t


def job_details(job: Job) -> Table:
    t = job_summary(job, job_elapsed(job, 0.0))
    t.add_row("kind", job.kind)
    t.add_row("name", job.name or "-")
    t.add_row("owner", job.snapshot.owner or "-")
    t.add_row("created", when(job.created_at))
    t.add_row("finished", when(job.finished_at))
    return t


def jobs_table(jobs: list[Job]) -> Table:
    t = table(
        "job",
        "kind",
        "name",
        "state",
        "tasks",
        "held",
        "spent",
        "created",
        fixed={"job": 32, "state": 9},
    )
    for job in jobs:
        c = job.counts
        t.add_row(
            job.id,
            job.kind,
            job.name or "-",
            job.state.value,
            f"{c.done}/{c.total}",
            str(job.cost_held),
            str(job.cost_spent),
            when(job.created_at),
        )
    return t
