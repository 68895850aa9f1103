"""What every command shares: the connection flags, clients built from them, error exits."""

import argparse
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path

from sparegrid.cli import output
from sparegrid.sdk import AdminClient, Client, SparegridError, UnavailableError
from sparegrid.sdk.config import (
    ENV_ADDRESS,
    ENV_ADMIN_KEY,
    ENV_API_KEY,
    ENV_TLS,
    ENV_TLS_CA,
    admin_key_path,
    admin_key_paths,
    resolve_address,
    resolve_tls,
    resolve_tls_ca,
)
from sparegrid.wire.tls import Speaks, answering
from sparegrid.wire.tls import hint as tls_hint

Handler = Callable[[argparse.Namespace], int]

# What the request's field holds, for a number a flag passes on: past it, building the
# request failed with a ValueError (a traceback) before anything was sent.
INT32 = (-(2**31), 2**31 - 1)
UINT32 = (0, 2**32 - 1)
INT64 = (-(2**63 - 1), 2**63 - 1)  # symmetric: `account unstake N` sends -N


def whole(bounds: tuple[int, int]) -> Callable[[str], int]:
    """An argparse type: a whole number within `bounds`, the field the request carries it
    in. A number past them is refused naming the flag; what the coordinator takes within
    them, it says itself."""
    low, high = bounds

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value > high:
            raise argparse.ArgumentTypeError(f"{text} is past the largest it takes ({high:,})")
        if value < low:
            raise argparse.ArgumentTypeError(f"{text} is below the smallest it takes ({low:,})")
        return value

    return parse


def seconds(text: str) -> float:
    """An argparse type: a time to wait, in seconds, above 0 (`--timeout 0.5`)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"{text} seconds: give a time above 0, such as 60")
    return value


CREATE_ACCOUNT = (
    "an operator creates an account and its key with `sparegrid admin account create NAME`, "
    "or gives you an invitation code for `sparegrid account signup --code CODE`"
)
NEW_CODE = "ask the coordinator's operator for a new code (`sparegrid admin invite create`)"
# What to do next, for the errors a user causes most often.
HINTS = {
    "NO_API_KEY": CREATE_ACCOUNT,
    "BAD_API_KEY": CREATE_ACCOUNT,
    "JOB_NOT_FOUND": "`sparegrid job list` shows the jobs of your account",
    "ACCOUNT_NOT_FOUND": "`sparegrid admin account list` shows the accounts",
    "STAKE_LOCKED": "stop your workers; the stake unlocks once they have been away for the "
    "lock time",
    "QUORUM_UNREACHABLE": "ask for fewer replicas (--replicas), or the adaptive policy (the "
    "default)",
    "JOB_NOT_RETRYABLE": "`sparegrid job get JOB_ID` shows its state",
    "ACCOUNT_DISABLED": "an operator disabled this account; `sparegrid admin account enable "
    "NAME` enables it again",
    "LAST_ADMIN": "create another admin account first: `sparegrid admin account create NAME "
    "--admin`",
    "BAD_AMOUNT": "a positive whole number of credit; `sparegrid admin credit debit NAME "
    "AMOUNT --reason WHY` takes credit away",
    "WORKER_TOO_OLD": "upgrade the worker: pip install -U sparegrid",
    "INVITE_UNKNOWN": NEW_CODE,
    "INVITE_EXPIRED": NEW_CODE,
    "INVITE_REVOKED": NEW_CODE,
    "INVITE_USED_UP": NEW_CODE,
    "INVITE_NOT_FOUND": "`sparegrid admin invite list` lists the invitations",
    "ACCOUNT_EXISTS": "choose another name",
    "NOT_ADMIN": "use the admin key `coordinator serve` wrote to DATA_DIR/admin.key "
    "(--admin-key-file), or the key of an account made with --admin",
}
ADD_CREDIT = "have an operator add credit with `sparegrid admin credit grant ACCOUNT AMOUNT`"
# What to do about an error, for the command it means that for: (code, command) -> hint.
# (`account stake` and `admin credit debit` refused for credit say all there is to say.)
COMMAND_HINTS = {
    ("INSUFFICIENT_CREDIT", "job submit"): f"submit fewer tasks, or {ADD_CREDIT}",
    ("INSUFFICIENT_CREDIT", "job retry"): ADD_CREDIT,
    # the BAD_AMOUNT hint is an operator's (credit debit); a client's stake is its own
    ("BAD_AMOUNT", "account stake"): "`sparegrid account` shows your balance and stake",
    ("BAD_AMOUNT", "account unstake"): "`sparegrid account` shows your stake",
    ("BLOB_NOT_FOUND", "job retry"): "`sparegrid job submit KIND --input ... --dry-run` with "
    "the same files uploads them and submits nothing; then retry",
}
# An admin command's key comes from --admin-key-file, $SPAREGRID_ADMIN_KEY or the file
# `coordinator serve` recorded, whatever the coordinator's words say about the API key.
ADMIN_KEY_UNKNOWN = (
    "this coordinator does not know the admin key (--admin-key-file, $SPAREGRID_ADMIN_KEY, or "
    "the one `coordinator serve` recorded for this address): use the DATA_DIR/admin.key of "
    "the coordinator at this address"
)


def command_name(args: argparse.Namespace) -> str:
    """The command as typed, without its arguments: `admin credit debit`."""
    words = [getattr(args, "command", None) or ""]
    while isinstance(getattr(args, f"{words[-1]}_command", None), str):
        words.append(getattr(args, f"{words[-1]}_command"))
    return " ".join(words)


def is_admin_command(args: argparse.Namespace | None) -> bool:
    """Whether the command sends the admin key (`sparegrid admin ...`)."""
    return args is not None and command_name(args).startswith("admin ")


def hint_for(code: str, args: argparse.Namespace | None) -> str:
    """What to do about an error of `code`; "" when there is nothing to add."""
    if args is not None and (code, command_name(args)) in COMMAND_HINTS:
        return COMMAND_HINTS[code, command_name(args)]
    if code == "BAD_API_KEY" and is_admin_command(args):
        return ADMIN_KEY_UNKNOWN
    return HINTS.get(code, "")


def connection_parent() -> argparse.ArgumentParser:
    """`--coordinator` and `--tls-ca`, added to every command of the job/admin groups."""
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("connection")
    group.add_argument(
        "--coordinator",
        metavar="HOST:PORT",
        help=f"coordinator address (default: ${ENV_ADDRESS}, else 127.0.0.1:50051)",
    )
    group.add_argument(
        "--tls-ca", metavar="PEM", help=f"CA certificate for TLS (default: ${ENV_TLS_CA})"
    )
    group.add_argument(
        "--tls",
        action="store_const",
        const=True,
        help=f"TLS with the system's trust roots, for a publicly trusted certificate "
        f"(default: ${ENV_TLS}=1)",
    )
    return parent


def admin_parent() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--admin-key-file",
        metavar="PATH",
        help="file holding an admin API key (else $SPAREGRID_ADMIN_KEY, else the key "
        "`coordinator serve` recorded under $XDG_CONFIG_HOME/sparegrid/admin/)",
    )
    return parent


def client(args: argparse.Namespace) -> Client:
    return Client(args.coordinator, tls_ca=args.tls_ca, tls=args.tls)


def admin_client(args: argparse.Namespace) -> AdminClient:
    return AdminClient(
        args.coordinator, key_file=args.admin_key_file, tls_ca=args.tls_ca, tls=args.tls
    )


def admin_key_source(args: argparse.Namespace) -> Path | None:
    """The file the admin key of this command was read from (--admin-key-file, else the
    one `coordinator serve` recorded), or None when it came from $SPAREGRID_ADMIN_KEY."""
    if args.admin_key_file:
        return Path(args.admin_key_file)
    if os.environ.get(ENV_ADMIN_KEY, "").strip():
        return None
    address = resolve_address(getattr(args, "coordinator", None))
    return next((p for p in admin_key_paths(address) if p.is_file()), None)


def admin_account_name(args: argparse.Namespace) -> str:
    """The name of the account whose key this admin command sends."""
    source = admin_key_source(args)
    key = source.read_text().strip() if source is not None else None
    with Client(args.coordinator, api_key=key, tls_ca=args.tls_ca, tls=args.tls) as mine:
        return mine.account().name


def replace_key_file(path: Path, key: str) -> None:
    """Puts `key` in `path` in one step, readable by this user only."""
    tmp = path.with_name(path.name + ".new")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    os.replace(tmp, path)


def short_reason(message: str) -> str:
    """gRPC's "failed to connect to all addresses; ...: Connection refused" -> the last part;
    a failed TLS handshake, whose last part is a bare "OK" -> said as such."""
    lower = message.lower()
    if "handshake failed" in lower:
        return "the TLS handshake failed"
    if any(s in lower for s in ("failed to connect", "resolving", "resolution failed")):
        return message.rsplit(": ", 1)[-1].strip("[] ")
    return message


def uses_tls(args: argparse.Namespace) -> bool:
    return bool(resolve_tls_ca(getattr(args, "tls_ca", None))) or resolve_tls(
        getattr(args, "tls", None)
    )


def unreachable(args: argparse.Namespace, exc: UnavailableError) -> None:
    """The failure, then its likely cause: what listens at the address, if anything."""
    address = resolve_address(getattr(args, "coordinator", None))
    output.error(f"cannot reach coordinator at {address}: {short_reason(exc.message)}", exc.code)
    output.hint(
        tls_hint(address, uses_tls(args))
        or "the coordinator may be starting or overloaded: try again shortly"
    )


def recorded_admin_keys() -> list[str]:
    """The addresses `coordinator serve` recorded an admin key for, on this machine."""
    folder = admin_key_path("127.0.0.1:1").parent
    if not folder.is_dir():
        return []
    found = []
    for name in sorted(p.stem for p in folder.glob("*.key")):
        host, sep, port = name.rpartition("_")
        if not sep or not port.isdigit():
            found.append(name)
        else:  # as --coordinator takes it: [::1]:50051 for an IPv6 host
            found.append(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    return found


def no_admin_key(args: argparse.Namespace) -> None:
    """NO_ADMIN_KEY is often a wrong address: say what listens there, and which addresses
    have a recorded key."""
    address = resolve_address(getattr(args, "coordinator", None))
    where, speaks = answering(address)
    recorded = recorded_admin_keys()
    if speaks in (Speaks.NOTHING, Speaks.OTHER):
        output.hint(tls_hint(where, uses_tls(args), speaks))
    if recorded:
        output.hint(f"`coordinator serve` recorded admin keys for: {', '.join(recorded)}")


def failed(exc: SparegridError, args: argparse.Namespace | None = None) -> None:
    """One `error:` line in the user's terms, then what to do when we know it."""
    if exc.code == "NO_API_KEY":
        output.error(f"no API key: set ${ENV_API_KEY} to your account's key", exc.code)
    elif exc.code == "BAD_API_KEY" and is_admin_command(args):
        # the coordinator's words ("check SPAREGRID_API_KEY") are for clients; an admin
        # command sent the admin key
        output.error("the admin key is not known to this coordinator", exc.code)
    else:
        output.sparegrid_error(exc)
    if hint_for(exc.code, args):
        output.hint(hint_for(exc.code, args))
    if exc.code == "NO_ADMIN_KEY" and args is not None:
        no_admin_key(args)


def run(handler: Handler, args: argparse.Namespace) -> int:
    """Runs a command: SDK errors become one `error:` line and exit 1, never a traceback."""
    try:
        code = handler(args)
        sys.stdout.flush()  # a reader that left shows here, not as a traceback at exit
        return code
    except BrokenPipeError:  # the reader left (`... | head`): stop quietly, as cat does
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # nothing more to flush at exit
        return 141  # 128 + SIGPIPE
    except UnavailableError as exc:
        unreachable(args, exc)
    except SparegridError as exc:
        failed(exc, args)
    except OSError as exc:
        output.error(f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc))
    except KeyboardInterrupt:
        output.error("interrupted")
        return 130
    return 1
