"""`sparegrid job ...`: submit, wait, results, get, logs, list, cancel, verify."""

import argparse
import json
import re
from pathlib import Path
from typing import Any

from sparegrid.cli import common, costs, fetch, flagwords, inference, logs, offline, output
from sparegrid.cli import generate as generate_cli
from sparegrid.cli import render as render_cli
from sparegrid.cli.follow import follow
from sparegrid.cli.results import write_result
from sparegrid.sdk import Client, InvalidArgumentError, JobState, SparegridError
from sparegrid.sdk.config import resolve_address
from sparegrid.sdk.resultfiles import check_output_dir, staged, write_index

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
        "--max-attempts",
        type=common.whole(common.UINT32),
        default=0,
        metavar="N",
        help="tries per task (0: default)",
    )
    p.add_argument(
        "--replicas",
        type=common.whole(common.UINT32),
        default=0,
        metavar="K",
        help="run each task on K nodes of different owners (with --quorum; default: the "
        "adaptive policy, which cross-checks new and unproven nodes)",
    )
    p.add_argument(
        "--quorum",
        type=common.whole(common.UINT32),
        default=0,
        metavar="M",
        help="M of the K results must agree",
    )
    p.add_argument("--wait", action="store_true", help="wait for the job, as `job wait`")
    p.add_argument(
        "--timeout",
        type=common.seconds,
        metavar="SECONDS",
        help="with --wait: give up after SECONDS",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="show what the job would cost (tasks, work, price, replicas, credit held) and "
        "submit nothing; exit 1 if the account cannot pay for it",
    )
    p.add_argument("--json", action="store_true", help="with --dry-run: the estimate as JSON")
    p.add_argument(
        "--priority",
        type=common.whole(common.INT32),
        default=0,
        metavar="P",
        help="order among your own jobs, -100 to 100: higher runs first (0)",
    )
    p.add_argument(
        "--webhook",
        default="",
        metavar="URL",
        help="called (POST, signed with your account's webhook secret) once the job ends; "
        "see `sparegrid account --webhook-secret`",
    )
    p.add_argument(
        "--keep-logs",
        action="store_true",
        help="keep what successful tasks wrote too (failed ones' is always kept); "
        "see `sparegrid job logs`",
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
        "0 succeeded, 1 failed or cancelled (or the coordinator stopped answering), "
        "2 --timeout reached, 130 interrupted (the job goes on).",
    )
    p.add_argument("job_id", metavar="JOB_ID", help=JOB_ID_HELP)
    p.add_argument(
        "--timeout", type=common.seconds, metavar="SECONDS", help="give up after SECONDS (exit 2)"
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
    p.add_argument("-o", "--output", metavar="DIR", help="directory to create")
    p.add_argument(
        "--force", action="store_true", help="write into DIR even if it holds files already"
    )
    p.add_argument(
        "--batch-out",
        metavar="JSONL",
        help="a generate job's completions as the OpenAI Batch output, as `submit --wait "
        "--out` writes it (instead of -o); needs the job's --model DIR and --prompts JSONL",
    )
    p.add_argument("--model", metavar="DIR", help="with --batch-out: the job's model folder")
    p.add_argument("--prompts", metavar="JSONL", help="with --batch-out: the job's batch file")
    p.add_argument(
        "--continue",
        dest="resume",
        action="store_true",
        help="fetch only what is new or missing into DIR (outputs already there are kept when "
        "their digests match); run it again as a job's frames arrive; a fetch cut short "
        "resumes",
    )
    p.set_defaults(func=results)

    p = jobs.add_parser(
        "preview",
        parents=[conn],
        help="save a render job's latest finished frame (or --frame N)",
    )
    p.add_argument("job_id", metavar="JOB_ID", help=JOB_ID_HELP)
    p.add_argument("--frame", type=int, metavar="N", help="this frame (default: the latest)")
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="e.g. f.png")
    p.set_defaults(func=preview)

    p = jobs.add_parser(
        "prices", parents=[conn], help="the coordinator's price per job kind (credit per work)"
    )
    p.add_argument("--json", action="store_true", help="as JSON")
    p.set_defaults(func=prices)

    for name, func, text in (
        ("get", get, "show a job"),
        ("cancel", cancel, "cancel a job; its unused credit comes back"),
    ):
        p = jobs.add_parser(name, parents=[conn], help=text)
        p.add_argument("job_id", metavar="JOB_ID", help=JOB_ID_HELP)
        if name == "get":
            output.add_json_flag(p)
        p.set_defaults(func=func)

    p = jobs.add_parser(
        "verify",
        parents=[conn],
        help="check every receipt of a job, or offline those `job results` wrote (--dir)",
        description="Checks every receipt of JOB_ID as the coordinator returns them; or, with "
        "--dir DIR and no JOB_ID, offline: each receipt in DIR, the coordinator's "
        "countersignature (the key pinned for --coordinator, or $SPAREGRID_COORDINATOR_KEY) "
        "and that each output file in DIR has the digest its receipt states. Exit 1 when "
        "one does not check out.",
    )
    p.add_argument("job_id", metavar="JOB_ID", nargs="?", help=JOB_ID_HELP)
    p.add_argument("--dir", type=Path, metavar="DIR", help="a directory `job results` wrote")
    p.set_defaults(func=verify)

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

    logs.add_parser(jobs, [conn], JOB_ID_HELP)

    p = jobs.add_parser("list", parents=[conn], help="list your recent jobs")
    p.add_argument(
        "--limit",
        type=common.whole(common.UINT32),
        default=20,
        metavar="N",
        help="at most N jobs (20)",
    )
    output.add_json_flag(p)
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
    """Submits a job; an error that names a parameter of the SDK names its flag instead."""
    try:
        return _submit(args)
    except SparegridError as exc:
        raise flagwords.in_flags(exc) from None


def _submit(args: argparse.Namespace) -> int:
    if args.json and not args.dry_run:
        raise InvalidArgumentError("BAD_FLAGS", "--json goes with --dry-run")
    if args.dry_run and args.wait:
        raise InvalidArgumentError("BAD_FLAGS", "--dry-run submits nothing: drop --wait")
    render_cli.check_flags(args)
    if args.kind == "render":
        return render_cli.submit(args)
    if args.kind == "generate":
        return generate_cli.submit(args)
    params = parse_params(args)
    inputs = parse_inputs(args.input)
    if args.kind == "inference":
        inference.check_args(args)
        if args.dry_run:
            raise InvalidArgumentError(
                "BAD_FLAGS",
                "--dry-run is not available for inference jobs yet; `sparegrid job prices` "
                "shows the price per GFLOP x sample",
            )
    with common.client(args) as client:
        if inputs or args.kind == "inference":
            check_kind(client, args.kind)
        if args.kind == "inference":
            job = inference.submit(client, args)
        else:
            digests = {name: upload(client, name, path) for name, path in inputs.items()}
            if args.dry_run:
                found = client.estimate(
                    args.kind,
                    params,
                    digests,
                    name=args.name,
                    max_attempts=args.max_attempts,
                    replicas=args.replicas,
                    quorum=args.quorum,
                    priority=args.priority,
                    webhook_url=args.webhook,
                )
                return costs.show_estimate(found, args.json)
            job = client.submit(
                args.kind,
                params,
                digests,
                name=args.name,
                max_attempts=args.max_attempts,
                replicas=args.replicas,
                quorum=args.quorum,
                priority=args.priority,
                webhook_url=args.webhook,
                keep_logs=args.keep_logs,
            )
        print(job.id, flush=True)
        output.note(
            f"submitted {job.kind} job {job.id}: {output.count(job.counts.total, 'task')}, "
            f"{job.cost_held} credit held"
        )
        if args.wait:
            return follow(job, args.timeout, summary=output.err())
    return 0


# --- wait --------------------------------------------------------------------------------


def wait(args: argparse.Namespace) -> int:
    with common.client(args) as client:
        return follow(client.get_job(args.job_id), args.timeout)


# --- results -----------------------------------------------------------------------------


def results(args: argparse.Namespace) -> int:
    if args.batch_out or args.model or args.prompts:
        return generate_cli.batch_out(args)
    if not args.output:
        raise InvalidArgumentError("BAD_FLAGS", "name the directory to write: -o DIR")
    if args.resume:
        return fetch.results_continue(args)
    out_dir = Path(args.output)
    check_output_dir(out_dir, args.force)
    with common.client(args) as client:
        job = client.get_job(args.job_id)  # an unknown job fails here, before any write
        if job.kind == "render":  # as the SDK's Job.write_frames writes them
            frames = job.write_frames(out_dir, force=args.force)
            entries = frames.entries
            if frames.note:
                (output.note if frames.still else output.hint)(frames.note)
        else:
            items = client.results(job.id)
            with staged(out_dir) as stage:
                entries = [write_result(client, r, stage) for r in items]
                merged = inference.write_merged(items, stage) if job.kind == "inference" else None
                write_index(stage, job.id, entries, merged)
    verified = sum(1 for e in entries if e["verified"])
    bad = [e for e in entries if not e["verified"] and e["state"] == "succeeded"]
    # results.json lists every task; only those that succeeded have outputs written
    written = sum(1 for e in entries if e["state"] == "succeeded")
    of = "" if written == len(entries) else f" (of {output.count(len(entries), 'task')})"
    print(
        f"{output.count(written, 'result')} written to {out_dir}{of}, "
        f"{output.count(verified, 'receipt')} verified"
    )
    for entry in bad:
        output.error(f"task {entry['task']} ({entry['task_id']}): {'; '.join(entry['problems'])}")
    if not job.finished:
        output.hint(
            f"job {job.id} is still {job.state.value}: {job.counts.done} of "
            f"{output.count(job.counts.total, 'task')} are done; fetch again once `sparegrid job wait "
            f"{job.id}` returns"
        )
    elif written < job.counts.total:  # a failed or cancelled job: say why the rest is missing
        ended = "was cancelled" if job.state is JobState.CANCELLED else job.state.value
        why = f" ({job.error})" if job.error else ""
        logs = f"; `sparegrid job logs {job.id}` shows what its failed tasks wrote"
        output.hint(
            f"job {job.id} {ended}{why}: no result for "
            f"{output.count(job.counts.total - written, 'task')}"
            f"{logs if job.state is JobState.FAILED else ''}"
        )
    return 1 if bad else 0


# --- small commands ----------------------------------------------------------------------


def preview(args: argparse.Namespace) -> int:
    return fetch.preview(args)


def prices(args: argparse.Namespace) -> int:
    return costs.prices(args)


def get(args: argparse.Namespace) -> int:
    with common.client(args) as client:
        job = client.get_job(args.job_id)
        disputes = client.disputes(args.job_id)
    if args.json:
        output.show_json({"job": job, "disputes": disputes})
        return 0
    output.show(output.job_details(job))
    if disputes:
        output.show(output.disputes_table(disputes))
    return 0


def retry(args: argparse.Namespace) -> int:
    with common.client(args) as client:
        before = client.get_job(args.job_id).counts
        job = client.retry_job(args.job_id)
        print(job.id)
        output.note(
            f"{output.count(before.failed + before.cancelled, 'task')} queued again; "
            f"{before.succeeded} keep their results"
        )
        return follow(job, None) if args.wait else 0


def list_jobs(args: argparse.Namespace) -> int:
    with common.client(args) as client:
        jobs = client.list_jobs(args.limit)
    if args.json:
        output.show_json(jobs)
        return 0
    if not jobs:
        output.note("no jobs yet: `sparegrid job submit KIND ...` submits one")
        return 0
    output.show(output.jobs_table(jobs))
    return 0


def cancel(args: argparse.Namespace) -> int:
    """Exit 0 once the job is cancelled (now or before); 1 if it had already ended otherwise."""
    with common.client(args) as client:
        before = client.get_job(args.job_id)
        again = before.state is JobState.CANCELLED  # a second cancel: say it changed nothing
        job = before if again else client.cancel(args.job_id)
    if job.state is not JobState.CANCELLED:
        output.error(f"job {job.id} already {job.state.value}; nothing to cancel", "JOB_FINISHED")
        return 1
    print(f"{job.id}: {job.state.value}")
    done = f"{job.cost_spent} credit spent, {job.cost_refunded} refunded"
    if again:
        output.note(f"job {job.id} was already cancelled; nothing changed ({done})")
    else:
        output.note(f"{output.count(job.counts.cancelled, 'task')} cancelled; {done}")
    return 0


def verify(args: argparse.Namespace) -> int:
    if (args.job_id is None) == (args.dir is None):
        raise InvalidArgumentError(
            "BAD_FLAGS", "give a JOB_ID, or --dir DIR to check a results directory offline"
        )
    if args.dir is not None:
        return offline.report(args.dir, resolve_address(args.coordinator))
    with common.client(args) as client:
        report = client.get_job(args.job_id).verify()
    skipped = f" ({output.count(report.skipped, 'task')} without a result skipped)"
    print(
        f"{output.count(report.ok, 'receipt')} verified, {len(report.failures)} failed"
        + (skipped if report.skipped else "")
    )
    for failure in report.failures:
        output.error(f"task {failure.index} ({failure.task_id}): {failure.reason}")
    return 0 if report.passed else 1
