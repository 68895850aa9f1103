"""Formatting shared by the commands: consoles, tables, progress bars, error lines.

Results a script may read go to stdout; progress, hints and errors go to stderr.
"""

import argparse
import base64
import contextlib
import dataclasses
import enum
import json
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

from rich import box
from rich.console import Console, RenderableType
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TransferSpeedColumn,
)
from rich.table import Table
from rich.text import Text

from sparegrid.sdk import (
    Dispute,
    Job,
    JobSnapshot,
    SparegridError,
    WebhookDelivery,
    WebhookState,
)

PLAIN_INTERVAL = 5.0  # seconds between progress lines when stderr is not a terminal
PIPE_WIDTH = 1000  # piped tables keep their natural width: ids are never cut


def out() -> Console:
    """stdout; wide when piped, so tables of ids neither wrap nor get cut."""
    console = Console(highlight=False)
    if not console.is_terminal:
        console = Console(highlight=False, width=max(console.width, PIPE_WIDTH))
    return console


def err() -> Console:
    """stderr; a message line is never broken, however narrow the terminal."""
    return Console(stderr=True, highlight=False, soft_wrap=True)


def show(renderable: RenderableType, console: Console | None = None) -> None:
    """Prints a table; piped, without the spaces that pad its last column."""
    console = console or out()
    if console.is_terminal:
        console.print(renderable)
        return
    with console.capture() as captured:
        console.print(renderable)
    lines = [line.rstrip() for line in captured.get().splitlines()]
    console.file.write("".join(line + "\n" for line in lines))
    console.file.flush()


def plain(value: Any) -> Any:
    """A model (dataclass, enum, time) as JSON-ready values; times in ISO 8601 UTC."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    snapshot = getattr(value, "snapshot", None)  # an SDK Job: its last snapshot
    if snapshot is not None and dataclasses.is_dataclass(snapshot):
        return plain(snapshot)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, bytes):  # a job's params (JSON text); anything else as base64
        try:
            return value.decode()
        except UnicodeDecodeError:
            return "base64:" + base64.b64encode(value).decode()
    return value


def show_json(items: Any) -> None:
    """A listing as one JSON document on stdout (`--json`), for scripts."""
    print(json.dumps(plain(items), indent=2, sort_keys=True), flush=True)


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--json", action="store_true", help="print the listing as JSON, for scripts"
    )


def error(message: str, code: str = "") -> None:
    """`error: <message> [CODE]` on stderr, one line."""
    suffix = f" [{code}]" if code else ""
    err().print(f"[bold red]error:[/] {escape(message + suffix)}")


def sparegrid_error(exc: SparegridError) -> None:
    error(exc.message, exc.code)


def hint(message: str) -> None:
    """`hint: <what to do>` on stderr, after an error or a result."""
    err().print(f"[dim]hint:[/] {escape(message)}")


def warning(message: str) -> None:
    """`warning: <what to know>` on stderr: it worked, but not as one may think."""
    err().print(f"[bold yellow]warning:[/] {escape(message)}")


def note(message: str) -> None:
    """A status line on stderr (stdout stays for results)."""
    err().print(message, markup=False)


def count(n: int, noun: str) -> str:
    """`1 task`, `2 tasks`: a number and its noun, plural unless it is one."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def a_or_an(word: str) -> str:
    """`a render`, `an echo`: the word with its indefinite article."""
    return f"an {word}" if word[:1].lower() in "aeiou" else f"a {word}"


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


def table(*columns: str, title: str | None = None) -> Table:
    """A listing. Piped, it keeps its natural width; on a narrow terminal a long id folds
    onto a second line rather than being cut."""
    t = Table(
        title=title,
        title_justify="left",
        header_style="bold",
        box=box.SIMPLE_HEAD,
        padding=(0, 1, 0, 0),
        show_edge=False,
    )
    for column in columns:
        t.add_column(column, overflow="fold")
    return t


@contextlib.contextmanager
def transfer(label: str, total: int) -> Iterator[Callable[[int, int], None]]:
    """A byte progress bar on stderr; yields the callback the SDK calls."""
    console = err()
    if not console.is_terminal:
        yield lambda done, total: None
        console.print(f"{label}: {size(total)} done", markup=False)
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


def eta_text(job: Job) -> str:
    """Time left at the pace so far: "12m03s", "-" before a task is done, "" once final."""
    if job.finished:
        return ""
    left = job.eta
    return "-" if left is None else duration(left)


def progress_line(job: Job, elapsed: float) -> str:
    """One plain progress line, labelled, within 80 columns (a waiting reason aside)."""
    c = job.counts
    failed = f" ({c.failed} failed)" if c.failed else ""
    line = (
        f"{job.id[:12]} {job.state.value:<9} tasks {c.done}/{c.total}{failed}  "
        f"elapsed {duration(elapsed)}"
    )
    eta = eta_text(job)
    if eta:
        line += f"  eta {eta}"
    if job.waiting:
        line += f"\n  waiting: {job.waiting}"
    return line


def _plain_reporter(console: Console) -> Callable[[Job], None]:
    began = time.monotonic()  # for a job that does not carry its creation time
    last: dict[str, Any] = {"at": 0.0, "done": -1, "waiting": ""}

    def report(job: Job) -> None:
        c = job.counts
        now = time.monotonic()
        changed = c.done != last["done"] or job.waiting != last["waiting"]
        due = now - last["at"] >= PLAIN_INTERVAL
        # a line when something changed, and one every PLAIN_INTERVAL * 6 regardless, so a
        # log shows the job is alive and how long is left
        if job.finished or (due and changed) or now - last["at"] >= PLAIN_INTERVAL * 6:
            console.print(progress_line(job, job_age(job, began)), markup=False)
            last.update(at=now, done=c.done, waiting=job.waiting)

    return report


@contextlib.contextmanager
def job_progress(job: Job) -> Iterator[Callable[[Job], None]]:
    """Tasks done/total: a bar on a terminal, plain periodic lines otherwise; both with
    labelled columns that fit 80 columns, elapsed time and an ETA."""
    console = err()
    if not console.is_terminal:
        yield _plain_reporter(console)
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(bar_width=14),
        TextColumn("tasks {task.fields[tasks]}"),
        TextColumn("elapsed"),
        _JobAgeColumn(job, time.monotonic()),
        TextColumn("eta {task.fields[eta]}"),
    )
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("", total=job.counts.total or None, tasks="", eta="-")
        shown = {"waiting": ""}

        def update(j: Job) -> None:
            c = j.counts
            progress.update(
                task,
                completed=c.done,
                total=c.total or None,
                tasks=f"{c.done}/{c.total}",
                eta=eta_text(j) or "0s",
                description=f"{j.id[:12]} {j.state.value:<9}",
            )
            if j.waiting != shown["waiting"]:
                if j.waiting:
                    progress.console.print(f"waiting: {escape(j.waiting)}", style="dim")
                shown["waiting"] = j.waiting

        update(job)
        yield update


def job_elapsed(job: Job, fallback: float) -> float:
    if job.created_at and job.finished_at:
        return (job.finished_at - job.created_at).total_seconds()
    return fallback


def job_age(job: Job, began: float) -> float:
    """Seconds since the job was submitted (to its end, once final), as the progress line
    and the summary both count; since `began` (time.monotonic()) for a job that does not
    carry its creation time."""
    if job.created_at is None:
        return time.monotonic() - began
    if job.finished_at is not None:
        return job_elapsed(job, 0.0)
    return max((datetime.now(UTC) - job.created_at).total_seconds(), 0.0)


class _JobAgeColumn(ProgressColumn):
    """The job's age (`job_age`), ticking between updates as rich's elapsed column does."""

    def __init__(self, job: Job, began: float) -> None:
        super().__init__()
        self._job, self._began = job, began

    def render(self, task: Any) -> Text:
        return Text(duration(job_age(self._job, self._began)), style="progress.elapsed")


def fields(title: str, rows: list[tuple[str, str]]) -> Table:
    """A record shown as label/value lines."""
    return _fields(title, rows)


def _fields(title: str, rows: list[tuple[str, str]]) -> Table:
    t = Table(
        show_header=False,
        title=title,
        title_justify="left",
        box=None,
        pad_edge=False,
        padding=(0, 2, 0, 0),
    )
    t.add_column(style="bold", no_wrap=True)
    t.add_column()
    for name, value in rows:
        t.add_row(name, Text(value))
    return t


def _job_rows(job: Job) -> list[tuple[str, str]]:
    c = job.counts
    tasks = f"{c.succeeded} succeeded, {c.failed} failed, {c.cancelled} cancelled of {c.total}"
    credit = f"{job.cost_held} held, {job.cost_spent} spent, {job.cost_refunded} refunded"
    rows = [("state", job.state.value + (f" ({job.error})" if job.error else ""))]
    if job.waiting:
        rows.append(("waiting", job.waiting))
    eta = eta_text(job)
    if eta:
        rows.append(("eta", eta if eta != "-" else "- (no task done yet)"))
    return [*rows, ("tasks", tasks), ("credit", credit)]


def job_summary(job: Job, elapsed: float) -> Table:
    return _fields(f"job {job.id}", [*_job_rows(job), ("elapsed", duration(elapsed))])


def job_details(job: Job) -> Table:
    finished = when(job.finished_at)
    if job.finished_at is not None:
        finished += f" (after {duration(job_elapsed(job, 0.0))})"
    rows = [
        ("kind", job.kind),
        ("name", job.name or "-"),
        ("owner", job.snapshot.owner or "-"),
        *_job_rows(job),
        *([("priority", str(job.snapshot.priority))] if job.snapshot.priority else []),
        *([("webhook", webhook_text(job.webhook))] if job.snapshot.has_webhook else []),
        ("created", when(job.created_at)),
        ("finished", finished),
    ]
    return _fields(f"job {job.id}", rows)


def webhook_text(call: WebhookDelivery | None) -> str:
    """`delivered after 2 attempts (...)`, `failed after 10 attempts: HTTP 503`, `pending,
    attempt 3 of 10 at ... (last: ...)`; `called when it ends` before the job ended."""
    if call is None:
        return "called when it ends"
    attempts = count(call.attempts, "attempt")
    if call.state is WebhookState.DELIVERED:
        return f"delivered after {attempts} ({when(call.last_attempt_at)})"
    if call.state is WebhookState.FAILED:
        return f"failed after {attempts}: {call.last_error or 'no reason given'}"
    last = f" (last: {call.last_error})" if call.last_error else ""
    at = when(call.next_attempt_at)
    return f"{call.state.value}, attempt {call.attempts + 1} of {call.max_attempts} at {at}{last}"


def jobs_table(jobs: Sequence[Job | JobSnapshot], owners: bool = False) -> Table:
    """Jobs (with their accounts, for an operator); the name column only when a job has a
    name."""
    named = any(job.name for job in jobs)
    columns = ["job", *(["account"] if owners else []), "kind", *(["name"] if named else [])]
    t = table(*columns, "state", "tasks", "held", "spent", "created")
    for job in jobs:
        name = [Text(job.name or "-")] if named else []
        owner = [Text(getattr(job, "owner", "") or "-")] if owners else []
        t.add_row(
            job.id,
            *owner,
            Text(job.kind),
            *name,
            job.state.value,
            tasks_cell(job),
            str(job.cost_held),
            str(job.cost_spent),
            when(job.created_at),
        )
    return t


def tasks_cell(job: Job | JobSnapshot) -> str:
    """Tasks that succeeded of all, with those that failed or were cancelled named: a
    cancelled job of one task reads "0/1, 1 cancelled", not "1/1"."""
    c = job.counts
    text = f"{c.succeeded}/{c.total}"
    if c.failed:
        text += f", {c.failed} failed"
    if c.cancelled:
        text += f", {c.cancelled} cancelled"
    return text


def disputes_table(disputes: list[Dispute]) -> Table:
    """Tasks whose results disagreed: who returned what, and what each comparison found."""
    t = table("task", "state", "results (node owner)", "comparisons", "decision")
    for d in disputes:
        results = [
            f"{r.get('node', '?')} {r.get('owner', '?')}"
            + ("" if r.get("vetted", True) else " (no vote)")
            + (f" crop {r['crop']['box']}" if r.get("crop") else "")
            for r in d.evidence.get("results", [])
        ]
        comparisons = [_comparison(c) for c in d.evidence.get("comparisons", [])]
        t.add_row(
            str(d.task_index),
            d.state,
            Text("\n".join(results)),
            Text("\n".join(comparisons)),
            Text(str(d.evidence.get("decision", ""))),
        )
    return t


def _comparison(found: dict[str, Any]) -> str:
    verdict = "agree" if found.get("agree") else "differ"
    metrics = found.get("metrics") or {}
    shown = ", ".join(
        f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items()
    )
    return f"{found.get('a', '?')} vs {found.get('b', '?')}: {verdict}" + (
        f" ({shown})" if shown else ""
    )
