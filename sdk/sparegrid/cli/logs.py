"""`sparegrid job logs`: what the executors of a job's attempts wrote, as their nodes
signed it.

A log's bytes come from a worker, which may be hostile: nothing in them may reach the
terminal as a control sequence (colours, cursor moves, a retitled window, a line
rewritten with a carriage return, text reversed by a bidi override). `printable` shows
every such character as a visible escape instead.
"""

import argparse
import sys
import unicodedata
from typing import Any

from sparegrid.cli import common, output
from sparegrid.sdk import AttemptLog, InvalidArgumentError

_KEPT = {"\n", "\t"}


def add_parser(jobs: Any, parents: list[argparse.ArgumentParser], job_id_help: str) -> None:
    p = jobs.add_parser(
        "logs",
        parents=parents,
        help="show what a job's tasks wrote (failed ones; successful ones with --keep-logs)",
        description="Shows the last 64 KiB each attempt's executor wrote (stderr, stdout, "
        "tracebacks, warnings), with the worker's paths replaced by <scratch>, <work>, "
        "<cache>, <data> and <home>. Failed attempts always return their log; successful "
        "ones when the job was submitted with --keep-logs. Each log is checked against its "
        "node's signature; control characters are shown escaped.",
    )
    p.add_argument("job_id", metavar="JOB_ID", help=job_id_help)
    p.add_argument("--task", type=int, metavar="N", help="only task N (0 is the first)")
    p.add_argument("--json", action="store_true", help="the logs as JSON, for scripts")
    p.set_defaults(func=show)


def show(args: argparse.Namespace) -> int:
    if args.task is not None and args.task < 0:
        raise InvalidArgumentError(
            "BAD_TASK", f"--task is a task index (0 or more), got {args.task}"
        )
    if args.task is not None and args.task > common.UINT32[1]:  # past what the request holds
        raise InvalidArgumentError(
            "BAD_TASK", f"--task {args.task}: no job has that many tasks (at most 1,000,000)"
        )
    with common.client(args) as client:
        logs = client.task_logs(args.job_id, task=args.task)
    if args.json:
        output.show_json(logs)  # JSON escapes every control character
        return 0
    if not logs:
        which = f"task {args.task} of job {args.job_id}" if args.task is not None else args.job_id
        output.note(
            f"no logs for {which}: failed attempts return one; submit with --keep-logs to "
            "keep successful ones' too"
        )
        return 0
    for log in logs:
        sys.stdout.write(_header(log) + "\n" + printable(log.text))
        if log.text and not log.text.endswith("\n"):
            sys.stdout.write("\n")
    sys.stdout.flush()
    return 0 if all(log.verified for log in logs) else 1


def _header(log: AttemptLog) -> str:
    signed = "signed" if log.verified else f"NOT VERIFIED: {log.problem}"
    line = (
        f"== task {log.task_index}, attempt {log.attempt_id} on node {log.node_id}: "
        f"{log.outcome} ({signed}) =="
    )
    return printable(line)


def printable(text: str) -> str:
    """`text` with every control or format character (ESC, CR, BEL, C1, bidi overrides,
    line separators) but newline and tab written as a visible escape such as \\x1b."""
    return "".join(ch if ch in _KEPT or not _hidden(ch) else _escaped(ch) for ch in text)


def _hidden(ch: str) -> bool:
    return unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Zl", "Zp")


def _escaped(ch: str) -> str:
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
