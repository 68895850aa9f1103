"""`sparegrid admin ...`: accounts, credit, nodes, the ledger and invitation codes (needs an
admin key)."""

import argparse
from typing import Any

from rich.text import Text

from sparegrid.cli import common, events, invites, output
from sparegrid.sdk import JobState, LedgerEntry, Node


def register(subparsers: Any) -> None:
    parents = [common.connection_parent(), common.admin_parent()]
    group = subparsers.add_parser("admin", help="operator commands (admin API key)")
    admin = group.add_subparsers(dest="admin_command", metavar="COMMAND", required=True)

    accounts = admin.add_parser("account", help="create and list accounts")
    account = accounts.add_subparsers(dest="account_command", metavar="COMMAND", required=True)
    p = account.add_parser("create", parents=parents, help="create an account; prints its key")
    p.add_argument("name", metavar="NAME", help="account name")
    p.add_argument(
        "--credit",
        type=common.whole(common.INT64),
        default=0,
        metavar="N",
        help="initial credit (0)",
    )
    p.add_argument("--admin", action="store_true", help="make it an admin account")
    p.set_defaults(func=account_create)
    p = account.add_parser("list", parents=parents, help="list accounts")
    output.add_json_flag(p)
    p.set_defaults(func=account_list)
    for name, func, text in (
        ("disable", account_disable, "refuse the account's key and its nodes; its jobs run on"),
        ("enable", account_enable, "accept the account's key again"),
    ):
        p = account.add_parser(name, parents=parents, help=text)
        p.add_argument("name", metavar="NAME", help="account name")
        p.set_defaults(func=func)

    keys = admin.add_parser("key", help="rotate or revoke an account's API key")
    key = keys.add_subparsers(dest="key_command", metavar="COMMAND", required=True)
    for name, func, text in (
        ("rotate", key_rotate, "give the account a new key (printed once); the old one stops"),
        ("revoke", key_revoke, "stop the account's key; `key rotate` gives it a new one"),
    ):
        p = key.add_parser(name, parents=parents, help=text)
        p.add_argument("name", metavar="NAME", help="account name")
        p.set_defaults(func=func)

    credits = admin.add_parser("credit", help="grant or debit credit")
    credit = credits.add_subparsers(dest="credit_command", metavar="COMMAND", required=True)
    p = credit.add_parser("grant", parents=parents, help="add credit to an account")
    p.add_argument("name", metavar="NAME", help="account name")
    p.add_argument(
        "amount", metavar="AMOUNT", type=common.whole(common.INT64), help="credit to add"
    )
    p.add_argument(
        "--reason",
        default="granted by an operator",
        help="shown in the ledger (default: granted by an operator)",
    )
    p.set_defaults(func=credit_grant)
    p = credit.add_parser(
        "debit", parents=parents, help="take credit from an account (not beyond its balance)"
    )
    p.add_argument("name", metavar="NAME", help="account name")
    p.add_argument(
        "amount", metavar="AMOUNT", type=common.whole(common.INT64), help="credit to take"
    )
    p.add_argument("--reason", required=True, help="shown in the ledger")
    p.set_defaults(func=credit_debit)

    job_group = admin.add_parser("jobs", help="list or cancel the jobs of every account")
    jobs = job_group.add_subparsers(dest="jobs_command", metavar="COMMAND", required=True)
    p = jobs.add_parser("list", parents=parents, help="jobs of every account, newest first")
    p.add_argument("--account", default="", metavar="NAME", help="only this account's")
    p.add_argument(
        "--state",
        action="append",
        default=[],
        choices=[s.value for s in JobState if s != JobState.UNSPECIFIED],
        help="only jobs in this state (repeatable)",
    )
    p.add_argument(
        "--limit",
        type=common.whole(common.UINT32),
        default=100,
        metavar="N",
        help="at most N jobs (100)",
    )
    output.add_json_flag(p)
    p.set_defaults(func=jobs_list)
    p = jobs.add_parser("cancel", parents=parents, help="cancel any account's job")
    p.add_argument("job_id", metavar="JOB_ID", help="as `sparegrid admin jobs list` shows it")
    p.add_argument("--reason", default="", help="the job's error (default: cancelled by ...)")
    p.set_defaults(func=jobs_cancel)

    p = admin.add_parser(
        "nodes", parents=parents, help="list worker nodes, their owners and standing"
    )
    output.add_json_flag(p)
    p.set_defaults(func=nodes)

    node_group = admin.add_parser("node", help="approve, ban or reinstate a node")
    node = node_group.add_subparsers(dest="node_command", metavar="COMMAND", required=True)
    for name, func, text in (
        ("approve", node_approve, "let a new node work (coordinator --enrollment approve)"),
        ("ban", node_ban, "give a node no more work"),
        ("reinstate", node_reinstate, "lift a ban or quarantine; strikes start from zero"),
    ):
        p = node.add_parser(name, parents=parents, help=text)
        p.add_argument("node_id", metavar="NODE_ID", help="as `sparegrid admin nodes` lists it")
        p.add_argument("--reason", default="", help="shown in `sparegrid admin nodes`")
        p.set_defaults(func=func)

    ledgers = admin.add_parser("ledger", help="check and list the credit ledger")
    ledger = ledgers.add_subparsers(dest="ledger_command", metavar="COMMAND", required=True)
    p = ledger.add_parser("check", parents=parents, help="check that the ledger balances")
    p.set_defaults(func=ledger_check)
    p = ledger.add_parser("entries", parents=parents, help="list ledger entries")
    p.add_argument(
        "--account",
        default="",
        metavar="NAME",
        help="only this account's entries (a ledger id such as node:NODE_ID also works)",
    )
    p.add_argument("--job", default="", metavar="JOB_ID", help="only this job")
    p.add_argument(
        "--limit",
        type=common.whole(common.UINT32),
        default=100,
        metavar="N",
        help="at most N entries (100)",
    )
    output.add_json_flag(p)
    p.set_defaults(func=ledger_entries)

    events.register(admin, parents)
    invites.register(admin, parents)


def account_create(args: argparse.Namespace) -> int:
    with common.admin_client(args) as admin:
        account, key = admin.create_account(args.name, args.credit, args.admin)
    print(key, flush=True)
    kind = "admin account" if account.is_admin else "account"
    output.note(f"created {kind} {account.name!r} with {account.balance} credit")
    output.hint(
        "the API key above is shown only this once; clients read it from $SPAREGRID_API_KEY"
    )
    return 0


def account_list(args: argparse.Namespace) -> int:
    with common.admin_client(args) as admin:
        accounts = admin.list_accounts()
    if args.json:
        output.show_json(accounts)
        return 0
    t = output.table("account", "balance", "admin", "status", "created")
    for a in accounts:
        admin_ = "yes" if a.is_admin else "no"
        status = "disabled" if a.disabled else "enabled"
        status += "" if a.has_key else ", key revoked"
        t.add_row(Text(a.name), str(a.balance), admin_, status, output.when(a.created_at))
    output.show(t)
    return 0


def account_disable(args: argparse.Namespace) -> int:
    with common.admin_client(args) as admin:
        account = admin.set_account_disabled(args.name, True)
    print(f"account {account.name} is disabled: its key and its nodes are refused")
    output.hint(
        "its jobs run on; `sparegrid admin jobs list --account NAME` lists them and "
        "`sparegrid admin jobs cancel JOB_ID` stops one"
    )
    return 0


def account_enable(args: argparse.Namespace) -> int:
    with common.admin_client(args) as admin:
        account = admin.set_account_disabled(args.name, False)
    print(f"account {account.name} is enabled")
    return 0


def key_rotate(args: argparse.Namespace) -> int:
    with common.admin_client(args) as admin:
        own = common.admin_key_source(args)
        caller = common.admin_account_name(args) if own is not None else ""
        account, key = admin.rotate_key(args.name)
    print(key, flush=True)
    output.note(f"account {account.name!r} has a new API key; the old one no longer works")
    if own is not None and account.name == caller:
        # the key this command was given: admin commands would all fail with the old one
        common.replace_key_file(own, key)
        output.note(f"saved it in {own}, where admin commands read the admin key")
    else:
        output.hint("the key above is shown only this once")
    if account.name == "admin":
        output.hint(
            "replace the old key in the coordinator's DATA_DIR/admin.key with it (a "
            "restarted coordinator records that file's key for admin commands)"
        )
    return 0


def key_revoke(args: argparse.Namespace) -> int:
    with common.admin_client(args) as admin:
        account = admin.revoke_key(args.name)
    print(f"account {account.name}: key revoked; `sparegrid admin key rotate` issues a new one")
    return 0


def credit_debit(args: argparse.Namespace) -> int:
    with common.admin_client(args) as admin:
        account = admin.debit(args.name, args.amount, args.reason)
    print(f"{account.name}: {-args.amount:+d} credit, balance {account.balance}")
    return 0


def jobs_list(args: argparse.Namespace) -> int:
    with common.admin_client(args) as admin:
        jobs = admin.all_jobs(args.account, args.state, args.limit)
    if args.json:
        output.show_json(jobs)
    elif not jobs:
        output.note("no jobs match")
    else:
        output.show(output.jobs_table(jobs, owners=True))
    return 0


def jobs_cancel(args: argparse.Namespace) -> int:
    with common.admin_client(args) as admin:
        job = admin.cancel_job(args.job_id, args.reason)
    print(f"job {job.id} of {job.owner} is {job.state.value}: {job.error}")
    return 0


def credit_grant(args: argparse.Namespace) -> int:
    with common.admin_client(args) as admin:
        account = admin.grant(args.name, args.amount, args.reason)
    print(f"{account.name}: {args.amount:+d} credit, balance {account.balance}")
    return 0


NODE_COLUMNS = ["node", "name", "owner", "devices", "state", "done", "failed", "valid"]
NODE_COLUMNS += ["invalid", "checked", "tasks", "credit", "standing", "last seen"]


def nodes_table(items: list[Node]) -> Any:
    t = output.table(*NODE_COLUMNS)
    for n in items:
        devices = ", ".join(f"{d.index}:{d.name or d.kind.value}" for d in n.devices) or "-"
        standing = n.standing if n.standing == "active" else f"{n.standing}: {n.standing_reason}"
        owner = n.owner if n.vetted else f"{n.owner} (no vote: {n.vetted_reason})"
        t.add_row(
            n.node_id,
            Text(n.name),
            Text(owner or "-"),
            Text(devices),
            n.state,
            str(n.tasks_succeeded),
            str(n.tasks_failed),
            str(n.validated),
            str(n.invalid),
            f"{n.check_rate:.0%}",
            f"{n.in_flight}/{n.window}",
            str(n.credit),
            Text(standing),
            output.ago(n.last_seen),
        )
    return t


def node_approve(args: argparse.Namespace) -> int:
    with common.admin_client(args) as admin:
        node = admin.approve_node(args.node_id, args.reason)
    print(f"node {node.node_id} is {node.standing}: {node.standing_reason}")
    return 0


def node_ban(args: argparse.Namespace) -> int:
    with common.admin_client(args) as admin:
        node = admin.ban_node(args.node_id, args.reason)
    print(f"node {node.node_id} is {node.standing}: {node.standing_reason}")
    return 0


def node_reinstate(args: argparse.Namespace) -> int:
    with common.admin_client(args) as admin:
        node = admin.reinstate_node(args.node_id, args.reason)
    print(f"node {node.node_id} is {node.standing}: {node.standing_reason}")
    return 0


def nodes(args: argparse.Namespace) -> int:
    with common.admin_client(args) as admin:
        items = admin.nodes()
    if args.json:
        output.show_json(items)
        return 0
    if not items:
        output.note("no node has connected yet: `sparegrid worker run` starts one")
        return 0
    output.show(nodes_table(items))
    return 0


def ledger_check(args: argparse.Namespace) -> int:
    with common.admin_client(args) as admin:
        check = admin.ledger_check()
    if check.balanced:
        print(
            f"ledger balances: {output.count(check.transactions, 'transaction')}, "
            f"{check.entries} entries, sum {check.total}"
        )
        return 0
    output.error(
        f"ledger does not balance: {output.count(check.transactions, 'transaction')}, "
        f"{check.entries} entries, sum {check.total}"
    )
    for problem in check.problems:
        print(f"  {problem}")
    return 1


def ledger_entries(args: argparse.Namespace) -> int:
    with common.admin_client(args) as admin:
        entries = admin.ledger_entries(args.account, args.job, args.limit)
        disputes = admin.disputes(args.job) if args.job else []
    if args.json:
        output.show_json({"entries": entries, "disputes": disputes})
        return 0
    if not entries:
        output.note("no ledger entries match")
    else:
        output.show(entries_table(entries))
    if disputes:
        output.show(output.disputes_table(disputes))
    return 0


def task_label(entry: LedgerEntry) -> str:
    """The task as its index when its id is `<job id>-<index>`, as the coordinator makes it."""
    prefix = f"{entry.job_id}-"
    if entry.job_id and entry.task_id.startswith(prefix):
        return entry.task_id[len(prefix) :]
    return entry.task_id or "-"


def entries_table(entries: list[LedgerEntry]) -> Any:
    t = output.table("time", "transaction", "account", "amount", "reason", "job", "task")
    for e in entries:
        t.add_row(
            output.when(e.created_at),
            e.transaction_id,
            Text(e.account),
            f"{e.amount:+d}",
            Text(e.reason),
            e.job_id or "-",
            Text(task_label(e)),
        )
    return t
