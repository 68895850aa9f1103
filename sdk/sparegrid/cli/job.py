"""`sparegrid job ...`: submit, wait, results, get, list, cancel, verify."""

import argparse
import contextlib
import json
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rich.console import Console

from sparegrid.cli import common, inference, output
from sparegrid.cli import generate as generate_cli
from sparegrid.cli import render as render_cli
from sparegrid.sdk import (
    Client,
    DeadlineExceededError,
    InvalidArgumentError,
    Job,
    JobState,
    TaskResult,
    TaskState,
    VerificationError,
)

_INPUT_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
JOB_ID_HELP = "the id `job submit` printed (`sparegrid job list` shows them)"


def register(subparsers: Any) -> None:
    conn = common.connection_parent()
    group = subparsers.add_parser("job", help="submit jobs, follow them, fetch results")
    jobs = group.add_subparsers(dest="job_command", metavar="COMMAND", required=True)

    p = jobs.add_parser("submit", parents=[conn], help="upload inputs and submit a job")
    p.add_argument("kind", metavar="KIND", help="job kind, e.g. echo or checksum")
    p.add_argument("--tasks", type=int, metavar="N", help="split the job into N tasks")
    p.add_argument(
        "--input",
        action="append",
        default=[],
        metavar="[NAME=]PATH",
        help="file to upload as input NAME (PATH alone: input 'data'); repeatable",
    )
    p.add_argument("--data", help="params.data (echo)")
    p.add_argument("--sleep-ms", type=int, metavar="MS", help="params.sleep_ms (echo)")
    p.add_argument("--params", metavar="JSON", help="params as a JSON object")
    p.add_argument("--name", default="", help="a label for the job")
    p.add_argument(
        "--max-attempts", type=int, default=0, metavar="N", help="tries per task (0: default)"
    )
    p.add_argument(
        "--replicas",
        type=int,
        default=0,
        metavar="K",
        help="run each task on K nodes of different owners (with --quorum; default: the "
        "adaptive policy, which cross-checks new and unproven nodes)",
    )
    p.add_argument(
        "--quorum", type=int, default=0, metavar="M", help="M of the K results must agree"
    )
    p.add_argument("--wait", action="store_true", help="wait for the job, as `job wait`")
    p.add_argument(
        "--timeout", type=float, metavar="SECONDS", help="with --wait: give up after SECONDS"
    )
    inference.add_submit_options(p)
    render_cli.add_submit_options(p)
    generate_cli.add_submit_options(p)
    p.set_defaults(func=submit)

    p = jobs.add_parser(
        "wait",
        parents=[conn],
        help="follow a job until it is final",
        description="Follows a job until it is final, then prints a summary. Exit status: "
        "0 succeeded, 1 failed or cancelled, 2 --timeout reached, 130 interrupted "
        "(the job goes on).",
    )
    p.add_argument("job_id", metavar="JOB_ID", help=JOB_ID_HELP)
    p.add_argument(
        "--timeout", type=float, metavar="SECONDS", help="give up after SECONDS (exit 2)"
    )
    p.set_defaults(func=wait)

    p = jobs.add_parser(
        "results",
        parents=[conn],
        help="write outputs and receipts, verified",
        description="Writes DIR/task_NNNNN/<output>, DIR/receipts/task_NNNNN.receipt and an "
        "index DIR/results.json, after checking every receipt. DIR must not exist yet (or be "
        "empty); nothing is written unless every result could be fetched.",
    )
    p.add_argument("job_id", metavar="JOB_ID", help=JOB_ID_HELP)
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="directory to create")
    p.add_argument(
        "--force", action="store_true", help="write into DIR even if it holds files already"
    )
    p.set_defaults(func=results)

    for name, func, text in (
        ("get", get, "show a job"),
        ("cancel", cancel, "cancel a job; its unused credit comes back"),
        ("verify", verify, "check every receipt of a job"),
    ):
        p = jobs.add_parser(name, parents=[conn], help=text)
        p.add_argument("job_id", metavar="JOB_ID", help=JOB_ID_HELP)
        p.set_defaults(func=func)

    p = jobs.add_parser(
        "retry", parents=[conn], help="run the tasks of a failed or cancelled job again"
    )
    p.add_argument("job_id", metavar="JOB_ID", help=JOB_ID_HELP)
    p.add_argument(
        "--failed",
        action="store_true",
        required=True,
        help="run only the tasks that did not succeed (failed, or cancelled when the job "
        "failed); those that succeeded keep their results",
    )
    p.add_argument("--wait", action="store_true", help="follow the job until it ends")
    p.set_defaults(func=retry)

    p = jobs.add_parser("list", parents=[conn], help="list your recent jobs")
    p.add_argument("--limit", type=int, default=20, metavar="N", help="at most N jobs (20)")
    p.set_defaults(func=list_jobs)


# --- submit ------------------------------------------------------------------------------


def parse_params(args: argparse.Namespace) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if args.params:
        try:
            params = json.loads(args.params)
        except json.JSONDecodeError as exc:
            raise InvalidArgumentError("BAD_PARAMS", f"--params is not JSON: {exc}") from exc
        if not isinstance(params, dict):
            raise InvalidArgumentError("BAD_PARAMS", "--params must be a JSON object")
    for key, value in (("tasks", args.tasks), ("data", args.data), ("sleep_ms", args.sleep_ms)):
        if value is not None:
            params[key] = value
    tasks = params.get("tasks")
    if isinstance(tasks, int) and tasks < 1:
        where = "--tasks" if args.tasks is not None else "params.tasks"
        raise InvalidArgumentError("BAD_PARAMS", f"{where} must be at least 1, got {tasks}")
    return params


def check_kind(client: Client, kind: str) -> None:
    """UNKNOWN_KIND before any upload, as the coordinator would say it after."""
    known = sorted(k.name for k in client.info().kinds)
    if kind not in known:
        raise InvalidArgumentError(
            "UNKNOWN_KIND", f"unknown job kind {kind!r}; known kinds: {', '.join(known)}"
        )


def parse_inputs(values: list[str]) -> dict[str, Path]:
    """`PATH` is input "data"; `NAME=PATH` names it. Every file must exist."""
    inputs: dict[str, Path] = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not _INPUT_NAME.fullmatch(name) or Path(value).exists():
            name, path = "data", value
        if name in inputs:
            raise InvalidArgumentError("BAD_INPUT", f"input {name!r} is given twice")
        if not Path(path).is_file():
            raise InvalidArgumentError("BAD_INPUT", f"input {name!r}: no such file {path}")
        inputs[name] = Path(path)
    return inputs


def upload(client: Client, name: str, path: Path) -> str:
    total = path.stat().st_size
    with output.transfer(f"upload {name} ({path.name})", total) as progress:
        return client.upload(path, on_progress=progress)


def submit(args: argparse.Namespace) -> int:
    if args.kind == "render":
        return render_cli.submit(args)
    if args.kind == "generate":
        return generate_cli.submit(args)
    params = parse_params(args)
    inputs = parse_inputs(args.input)
    if args.kind == "inference":
        inference.check_args(args)
    with common.client(args) as client:
        if inputs or args.kind == "inference":
            check_kind(client, args.kind)
        if args.kind == "inference":
            job = inference.submit(client, args)
        else:
            digests = {name: upload(client, name, path) for name, path in inputs.items()}
            job = client.submit(
                args.kind,
                params,
                digests,
                name=args.name,
                max_attempts=args.max_attempts,
                replicas=args.replicas,
                quorum=args.quorum,
            )
        print(job.id, flush=True)
        output.note(
            f"submitted {job.kind} job {job.id}: {job.counts.total} tasks, "
            f"{job.cost_held} credit held"
        )
        if args.wait:
            return follow(job, args.timeout, summary=output.err())
    return 0


# --- wait --------------------------------------------------------------------------------


def follow(job: Job, timeout: float | None, summary: Console | None = None) -> int:
    """Progress until final, then the summary. 0 succeeded, 1 failed/cancelled, 2 timeout."""
    summary = summary or output.out()
    start = time.monotonic()
    try:
        with output.job_progress(job) as on_progress:
            job.wait(timeout=timeout, on_progress=on_progress)
    except DeadlineExceededError as exc:
        if exc.code != "WAIT_TIMEOUT":
            raise
        output.show(output.job_summary(job, time.monotonic() - start), summary)
        output.error(exc.message, exc.code)
        still_running(job)
        return 2
    except KeyboardInterrupt:
        output.error(f"interrupted; job {job.id} goes on without you")
        still_running(job)
        return 130
    output.show(output.job_summary(job, output.job_elapsed(job, time.monotonic() - start)), summary)
    return 0 if job.state is JobState.SUCCEEDED else 1


def still_running(job: Job) -> None:
    output.hint(
        f"`sparegrid job wait {job.id}` follows it again; `sparegrid job cancel {job.id}` stops it"
    )


def wait(args: argparse.Namespace) -> int:
    with common.client(args) as client:
        return follow(client.get_job(args.job_id), args.timeout)


# --- results -----------------------------------------------------------------------------


def safe_name(name: str) -> str:
    """An output name as a file name: no directories, no hidden or empty names."""
    cleaned = re.sub(r"[^A-Za-z0-9_.-]", "_", name).lstrip(".")
    return cleaned or "output"


def write_outputs(
    client: Client, result: TaskResult, task_dir: Path, problems: list[str]
) -> dict[str, str]:
    """Writes each output whose bytes match its digest; the others become problems."""
    written: dict[str, str] = {}
    for ref in result.outputs:
        dest = task_dir / safe_name(ref.name)
        try:
            if ref.digest in result.inline_outputs:
                data = result.output(ref.name)
                task_dir.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(data)
            else:
                client.download(ref.digest, dest)
        except VerificationError as exc:
            problems.append(exc.message)
            continue
        written[ref.name] = str(dest.relative_to(task_dir.parent))
    return written


def check(result: TaskResult, coordinator_key: bytes) -> str | None:
    """None when the receipt and its countersignature verify, else why not."""
    try:
        result.verify(coordinator_key=coordinator_key)
    except VerificationError as exc:
        return exc.message
    return None


def problems_of(client: Client, result: TaskResult) -> list[str]:
    """Why a result cannot be trusted (empty: its receipt verifies)."""
    if result.state is not TaskState.SUCCEEDED:
        return [f"task {result.state.value}, no result to verify"]
    problem = check(result, client.coordinator_key())
    return [problem] if problem is not None else []


def record(
    result: TaskResult, out_dir: Path, files: dict[str, str], problems: list[str]
) -> dict[str, Any]:
    """Writes the task's receipt under out_dir/receipts/; its entry in results.json."""
    label = f"task_{result.index:05d}"
    if result.receipt is not None:
        receipt = out_dir / "receipts" / f"{label}.receipt"
        receipt.parent.mkdir(parents=True, exist_ok=True)
        receipt.write_bytes(result.receipt.SerializeToString())
    return {
        "task": result.index,
        "task_id": result.task_id,
        "state": result.state.value,
        "node": result.node_id,
        "error": result.error,
        "outputs": [
            {"name": r.name, "digest": r.digest, "size": r.size, "file": files.get(r.name)}
            for r in result.outputs
        ],
        "receipt": f"receipts/{label}.receipt" if result.receipt is not None else None,
        "verified": not problems,
        "problems": problems,
    }


def write_result(client: Client, result: TaskResult, out_dir: Path) -> dict[str, Any]:
    problems = problems_of(client, result)
    files = write_outputs(client, result, out_dir / f"task_{result.index:05d}", problems)
    return record(result, out_dir, files, problems)


def check_output_dir(out_dir: Path, force: bool) -> None:
    """DIR must be new or empty (or --force): results never mix with other files unasked."""
    if out_dir.exists() and not out_dir.is_dir():
        raise InvalidArgumentError("OUTPUT_EXISTS", f"{out_dir} exists and is not a directory")
    if not force and out_dir.is_dir() and any(out_dir.iterdir()):
        raise InvalidArgumentError(
            "OUTPUT_EXISTS",
            f"{out_dir} already holds files; choose a new directory, or pass --force to "
            "write into it (files of the same names are replaced)",
        )


@contextlib.contextmanager
def staged(out_dir: Path) -> Iterator[Path]:
    """Where to write `out_dir`'s files so that a failure leaves nothing behind.

    A new `out_dir` is built beside it and renamed into place once complete; an existing
    one (empty, or --force) is written in place, and emptied again on failure if it was empty.
    """
    if out_dir.is_dir():
        was_empty = not any(out_dir.iterdir())
        try:
            yield out_dir
        except BaseException:
            if was_empty:
                for child in out_dir.iterdir():
                    if child.is_dir():
                        shutil.rmtree(child)
                    else:
                        child.unlink()
            raise
        return
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    stage = out_dir.parent / f".{out_dir.name}.partial-{uuid.uuid4().hex[:8]}"
    stage.mkdir()
    try:
        yield stage
        stage.rename(out_dir)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def write_index(
    out_dir: Path, job_id: str, entries: list[dict[str, Any]], merged: str | None = None
) -> None:
    index: dict[str, Any] = {"job": job_id, "results": entries}
    if merged:
        index["merged"] = merged
    (out_dir / "results.json").write_text(json.dumps(index, indent=2) + "\n")


def results(args: argparse.Namespace) -> int:
    out_dir = Path(args.output)
    check_output_dir(out_dir, args.force)
    with common.client(args) as client:
        job = client.get_job(args.job_id)  # an unknown job fails here, before any write
        items = client.results(job.id)
        with staged(out_dir) as stage:
            merged = None
            if job.kind == "render":
                entries = render_cli.write_results(client, items, stage)
            else:
                entries = [write_result(client, r, stage) for r in items]
            if job.kind == "inference":
                merged = inference.write_merged(items, stage)
            write_index(stage, job.id, entries, merged)
    verified = sum(1 for e in entries if e["verified"])
    bad = [e for e in entries if not e["verified"] and e["state"] == "succeeded"]
    print(f"{len(entries)} results written to {out_dir}, {verified} receipts verified")
    for entry in bad:
        output.error(f"task {entry['task']} ({entry['task_id']}): {'; '.join(entry['problems'])}")
    if not job.finished:
        output.hint(
            f"job {job.id} is still {job.state.value}: {job.counts.done} of "
            f"{job.counts.total} tasks are done; fetch again once `sparegrid job wait "
            f"{job.id}` returns"
        )
    return 1 if bad else 0


# --- small commands ----------------------------------------------------------------------


def get(args: argparse.Namespace) -> int:
    with common.client(args) as client:
        output.show(output.job_details(client.get_job(args.job_id)))
        disputes = client.disputes(args.job_id)
    if disputes:
        output.show(output.disputes_table(disputes))
    return 0


def retry(args: argparse.Namespace) -> int:
    with common.client(args) as client:
        before = client.get_job(args.job_id).counts
        job = client.retry_job(args.job_id)
        print(job.id)
        output.note(
            f"{before.failed + before.cancelled} task(s) queued again; "
            f"{before.succeeded} keep their results"
        )
        return follow(job, None) if args.wait else 0


def list_jobs(args: argparse.Namespace) -> int:
    with common.client(args) as client:
        jobs = client.list_jobs(args.limit)
    if not jobs:
        output.note("no jobs yet: `sparegrid job submit KIND ...` submits one")
        return 0
    output.show(output.jobs_table(jobs))
    return 0


def cancel(args: argparse.Namespace) -> int:
    """Exit 0 once the job is cancelled (now or before); 1 if it had already ended otherwise."""
    with common.client(args) as client:
        job = client.cancel(args.job_id)
    if job.state is not JobState.CANCELLED:
        output.error(f"job {job.id} already {job.state.value}; nothing to cancel", "JOB_FINISHED")
        return 1
    print(f"{job.id}: {job.state.value}")
    output.note(
        f"{job.counts.cancelled} tasks cancelled; {job.cost_spent} credit spent, "
        f"{job.cost_refunded} refunded"
    )
    return 0


def verify(args: argparse.Namespace) -> int:
    with common.client(args) as client:
        report = client.get_job(args.job_id).verify()
    skipped = f" ({report.skipped} tasks without a result skipped)" if report.skipped else ""
    print(f"{report.ok} receipts verified, {len(report.failures)} failed{skipped}")
    for failure in report.failures:
        output.error(f"task {failure.index} ({failure.task_id}): {failure.reason}")
    return 0 if report.passed else 1
