"""`sparegrid admin invite ...`: invitation codes, with which people sign up on their own
(`sparegrid account signup`)."""

import argparse
from datetime import UTC, datetime
from typing import Any

from rich.text import Text

from sparegrid.cli import common, output
from sparegrid.sdk import Invite
from sparegrid.wire.config import to_duration


def _expiry(text: str) -> float:
    try:
        seconds = to_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} {exc}") from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a time to come: give 7d, 24h or 90m")
    return seconds


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: an invitation allows at least 1 signup")
    return common.whole(common.UINT32)(text)


def register(admin: Any, parents: list[argparse.ArgumentParser]) -> None:
    group = admin.add_parser("invite", help="invitation codes people sign up with")
    invite = group.add_subparsers(dest="invite_command", metavar="COMMAND", required=True)
    p = invite.add_parser("create", parents=parents, help="issue an invitation code (printed once)")
    p.add_argument("--uses", type=_positive, default=1, metavar="N", help="signups it allows (1)")
    p.add_argument(
        "--expires",
        type=_expiry,
        default=0.0,
        metavar="DURATION",
        help="it stops working this long from now: 7d, 24h, 90m (default: never)",
    )
    p.add_argument(
        "--credit",
        type=common.whole(common.INT64),
        default=0,
        metavar="C",
        help="credit for each account it creates (0)",
    )
    p.add_argument("--note", default="", metavar="TEXT", help="shown in `admin invite list`")
    p.set_defaults(func=create)
    p = invite.add_parser("list", parents=parents, help="invitations issued, newest first")
    output.add_json_flag(p)
    p.set_defaults(func=list_)
    p = invite.add_parser("revoke", parents=parents, help="stop an invitation's code working")
    p.add_argument("invite_id", metavar="CODE_ID", help="its id, as `admin invite list` shows")
    p.set_defaults(func=revoke)


def _expires(invite: Invite) -> str:
    return "never" if invite.expires_at is None else output.when(invite.expires_at)


def status(invite: Invite) -> str:
    if invite.revoked:
        return "revoked"
    if invite.expires_at is not None and invite.expires_at <= datetime.now(UTC):
        return "expired"
    return "used up" if invite.left == 0 else "open"


def create(args: argparse.Namespace) -> int:
    with common.admin_client(args) as admin:
        invite, code = admin.create_invite(args.uses, args.expires, args.credit, args.note)
    print(code, flush=True)
    output.note(
        f"invitation {invite.id}: {invite.uses} signup(s), {invite.credit} credit each, "
        f"expires {_expires(invite)}"
    )
    output.hint(
        "the code above is shown only this once; whoever holds it signs up with "
        "`sparegrid account signup --code CODE`"
    )
    if invite.warning:
        output.warning(invite.warning)
    return 0


def list_(args: argparse.Namespace) -> int:
    with common.admin_client(args) as admin:
        invites = admin.invites()
    if args.json:
        output.show_json(invites)
        return 0
    if not invites:
        output.note(
            "no invitations: no one can sign up; `sparegrid admin invite create` issues one"
        )
        return 0
    t = output.table("id", "used", "credit", "status", "expires", "created", "note")
    for i in invites:
        t.add_row(
            i.id,
            f"{i.used}/{i.uses}",
            str(i.credit),
            status(i),
            _expires(i),
            output.when(i.created_at),
            Text(i.note),
        )
    output.show(t)
    return 0


def revoke(args: argparse.Namespace) -> int:
    with common.admin_client(args) as admin:
        invite = admin.revoke_invite(args.invite_id)
    print(f"invitation {invite.id} is revoked: its code no longer signs anyone up")
    return 0
