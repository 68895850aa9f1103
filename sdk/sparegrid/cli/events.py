"""`sparegrid admin events [--follow] [--json] [--kind K]`: what the coordinator recorded
for its operator (jobs, task failures, disputes, quarantines, bans, credit, and what
admins changed)."""

import argparse
import json
import sys
from typing import Any

from rich.text import Text

from sparegrid.cli import common, output
from sparegrid.sdk import Event


def register(admin: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = admin.add_parser(
        "events",
        parents=parents,
        help="recent job, task-failure, dispute, quarantine, ban, ledger and admin events",
    )
    p.add_argument("--follow", "-f", action="store_true", help="then print new ones as they come")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--job", default="", metavar="JOB_ID", help="only this job's")
    p.add_argument(
        "--kind",
        default="",
        metavar="KIND",
        help="only this kind or family: admin (what admins changed), job, task.failed, "
        "dispute, node, ledger, account.signup",
    )
    p.add_argument("--limit", type=int, default=50, metavar="N", help="the latest N first (50)")
    p.set_defaults(func=events)


def as_dict(event: Event) -> dict[str, object]:
    """The event as the coordinator's JSON log line has it, with its seq."""
    out: dict[str, object] = {"seq": event.seq, "id": event.id}
    out["at"] = event.at.isoformat() if event.at else None
    out["kind"] = event.kind
    for key in ("job_id", "task_id", "node_id", "account"):
        if getattr(event, key):
            out[key] = getattr(event, key)
    out["message"] = event.message
    if event.data:
        out["data"] = event.data
    return out


def _line(event: Event) -> Text:
    return Text(f"{output.when(event.at)}  {event.kind:<17} {event.message}")


def _none_found(args: argparse.Namespace) -> str:
    """What an empty listing means: "none yet" only when nothing narrowed it."""
    narrowed = [f"of kind {args.kind!r}"] if args.kind else []
    narrowed += [f"of job {args.job}"] if args.job else []
    if not narrowed:
        return "no events recorded yet"
    return f"no events {' and '.join(narrowed)} among those kept (--kind, --job narrow them)"


def events(args: argparse.Namespace) -> int:
    if not 1 <= args.limit <= 10_000:
        output.error(f"--limit takes 1 to 10000, got {args.limit}")
        return 2
    with common.admin_client(args) as admin:
        if not args.follow:
            found = admin.events(args.limit, args.job, args.kind)
            if args.json:
                for event in found:
                    print(json.dumps(as_dict(event)), flush=True)
            elif not found:
                output.note(_none_found(args))
            else:
                t = output.table("time", "kind", "message", "id")
                for e in found:
                    t.add_row(output.when(e.at), e.kind, Text(e.message), e.id)
                output.show(t)
            return 0
        try:
            for event in admin.follow_events(args.limit, args.job, kind=args.kind):
                if args.json:
                    print(json.dumps(as_dict(event)), flush=True)
                else:
                    output.out().print(_line(event))
                    sys.stdout.flush()
        except KeyboardInterrupt:
            return 0
    return 0
