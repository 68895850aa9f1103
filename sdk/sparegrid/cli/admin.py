"""`sparegrid admin ...`: accounts, credit, nodes and the ledger (needs an admin key)."""

import argparse
from typing import Any

from rich.text import Text

from sparegrid.cli import common, output
from sparegrid.sdk import LedgerEntry, Node


def register(subparsers: Any) -> None:
    parents = [common.connection_parent(), common.admin_parent()]
    group = subparsers.add_parser("admin", help="operator commands (admin API key)")
    admin = group.add_subparsers(dest="admin_command", metavar="COMMAND", required=True)

    accounts = admin.add_parser("account", help="create and list accounts")
    account = accounts.add_subparsers(dest="account_command", metavar="COMMAND", required=True)
    p = account.add_parser("create", parents=parents, help="create an account; prints its key")
    p.add_argument("name", metavar="NAME", help="account name")
    p.add_argument("--credit", type=int, default=0, metavar="N", help="initial credit (0)")
    p.add_argument("--admin", action="store_true", help="make it an admin account")
    p.set_defaults(func=account_create)
    p = account.add_parser("list", parents=parents, help="list accounts")
    p.set_defaults(func=account_list)

    credits = admin.add_parser("credit", help="grant credit")
    credit = credits.add_subparsers(dest="credit_command", metavar="COMMAND", required=True)
    p = credit.add_parser("grant", parents=parents, help="add credit to an account")
    p.add_argument("name", metavar="NAME", help="account name")
    p.add_argument("amount", metavar="AMOUNT", type=int, help="credit to add")
    p.add_argument(
        "--reason",
        default="granted by an operator",
        help="shown in the ledger (default: granted by an operator)",
    )
    p.set_defaults(func=credit_grant)

    p = admin.add_parser(
        "nodes", parents=parents, help="list worker nodes, their owners and standing"
    )
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
    p.add_argument("--account", default="", metavar="NAME", help="only this account")
    p.add_argument("--job", default="", metavar="JOB_ID", help="only this job")
    p.add_argument("--limit", type=int, default=100, metavar="N", help="at most N entries (100)")
    p.set_defaults(func=ledger_entries)


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
    t = output.table("account", "balance", "admin", "created")
    for a in accounts:
        admin_ = "yes" if a.is_admin else "no"
        t.add_row(Text(a.name), str(a.balance), admin_, output.when(a.created_at))
    output.show(t)
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
            f"ledger balances: {check.transactions} transactions, "
            f"{check.entries} entries, sum {check.total}"
        )
        return 0
    output.error(
        f"ledger does not balance: {check.transactions} transactions, "
        f"{check.entries} entries, sum {check.total}"
    )
    for problem in check.problems:
        print(f"  {problem}")
    return 1


def ledger_entries(args: argparse.Namespace) -> int:
    with common.admin_client(args) as admin:
        entries = admin.ledger_entries(args.account, args.job, args.limit)
        disputes = admin.disputes(args.job) if args.job else []
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
