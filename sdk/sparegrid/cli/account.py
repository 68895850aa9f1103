"""`sparegrid account ...`: your account's credit, holds and stake, and signing up for one
with an invitation code."""

import argparse
import os
import sys
from typing import Any

from sparegrid.cli import common, output
from sparegrid.sdk import Account, signup
from sparegrid.sdk.config import ENV_API_KEY, api_key_path, resolve_address, save_api_key


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
        p.add_argument(
            "amount", type=common.whole(common.INT64), metavar="CREDIT", help="how much credit"
        )
        p.set_defaults(func=func)
    p = commands.add_parser(
        "signup",
        parents=[conn],
        help="create your account with an invitation code from the coordinator's operator; "
        "its API key is saved for that coordinator",
    )
    p.add_argument(
        "--code", required=True, metavar="CODE", help="the invitation code (-: read it from stdin)"
    )
    p.add_argument(
        "--name",
        default="",
        metavar="NAME",
        help="your account's name: lowercase letters, digits, '_', '.', '-' (default: the "
        "coordinator picks one)",
    )
    p.set_defaults(func=signup_command)


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


def signup_command(args: argparse.Namespace) -> int:
    """Signs up, then saves the key where the other commands find it for this address."""
    address = resolve_address(args.coordinator)
    path = api_key_path(address)
    if path.exists():
        output.error(
            f"an API key for {address} is saved in {path} already; nothing was sent. "
            "Move that file away to sign up for another account",
            "KEY_SAVED",
        )
        return 1
    code = sys.stdin.readline().strip() if args.code == "-" else args.code.strip()
    account, key = signup(address, code, args.name, tls_ca=args.tls_ca, tls=args.tls)
    try:
        saved = save_api_key(address, key)
    except OSError as exc:  # the account exists now: the key must not be lost
        output.error(f"cannot save the API key in {path}: {exc.strerror or exc}")
        print(key, flush=True)
        output.hint("the key above is shown only this once: keep it, e.g. in $SPAREGRID_API_KEY")
        return 1
    print(saved, flush=True)
    output.note(
        f"signed up as {account.name!r} with {account.balance} credit; your API key is saved "
        f"in {saved} (readable by you only), where `sparegrid` commands for {address} find it"
    )
    output.hint(
        f"a worker of yours proves you own it with `sparegrid worker run --owner-key-file {saved}`"
    )
    if os.environ.get(ENV_API_KEY, "").strip():
        output.hint(f"${ENV_API_KEY} is set, and is used instead of the saved key while it is")
    return 0
