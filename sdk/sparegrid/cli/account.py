"""`sparegrid account ...`: your account's credit, holds and stake."""

import argparse
from typing import Any

from sparegrid.cli import common, output
from sparegrid.sdk import Account


def register(subparsers: Any) -> None:
    conn = common.connection_parent()
    group = subparsers.add_parser(
        "account", parents=[conn], help="your account: credit, escrow held, stake"
    )
    output.add_json_flag(group)
    group.add_argument(
        "--webhook-secret",
        action="store_true",
        help="print the hex key your jobs' webhook calls are signed with (HMAC-SHA256), "
        "for the receiver to verify them; it is not your API key",
    )
    group.set_defaults(func=show)
    commands = group.add_subparsers(dest="account_command", metavar="COMMAND")
    for name, func, text in (
        (
            "stake",
            stake,
            "lock credit as your stake: with the coordinator's --min-stake, your nodes' "
            "results count as votes only then; proven fraud is paid from it",
        ),
        (
            "unstake",
            unstake,
            "release stake, once your nodes have been away for the lock time (24 h)",
        ),
    ):
        p = commands.add_parser(name, parents=[conn], help=text)
        p.add_argument("amount", type=int, metavar="CREDIT", help="how much credit")
        p.set_defaults(func=func)


def _show(account: Account) -> None:
    rows = [
        ("balance", str(account.balance)),
        ("held", f"{account.held} (escrow of running jobs)"),
        ("stake", str(account.stake)),
    ]
    t = output.table("", "", title=f"account {account.name}")
    t.show_header = False
    for label, value in rows:
        t.add_row(label, value)
    output.show(t)


def show(args: argparse.Namespace) -> int:
    with common.client(args) as client:
        account = client.account()
        if args.webhook_secret:
            print(account.webhook_secret)
            return 0
        if args.json:
            output.show_json(account)
            return 0
        _show(account)
        holding = [j for j in client.list_jobs(1000) if not j.finished]
    if holding:
        t = output.table("job", "kind", "state", "tasks", "in escrow", "spent", title="holds")
        for job in holding:
            t.add_row(
                job.id,
                job.kind,
                job.state.value,
                output.tasks_cell(job),
                str(job.cost_held - job.cost_spent),
                str(job.cost_spent),
            )
        output.show(t)
    return 0


def stake(args: argparse.Namespace) -> int:
    if args.amount <= 0:
        output.error(f"stake a positive amount of credit, not {args.amount}", "BAD_AMOUNT")
        return 1
    with common.client(args) as client:
        _show(client.stake(args.amount))
    return 0


def unstake(args: argparse.Namespace) -> int:
    if args.amount <= 0:
        output.error(f"unstake a positive amount of credit, not {args.amount}", "BAD_AMOUNT")
        return 1
    with common.client(args) as client:
        _show(client.stake(-args.amount))
    return 0
