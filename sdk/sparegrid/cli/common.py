"""What every command shares: the connection flags, clients built from them, error exits."""

import argparse
from collections.abc import Callable

from sparegrid.cli import output
from sparegrid.sdk import AdminClient, Client, SparegridError, UnavailableError
from sparegrid.sdk.config import ENV_ADDRESS, ENV_API_KEY, ENV_TLS_CA, resolve_address

Handler = Callable[[argparse.Namespace], int]

CREATE_ACCOUNT = (
    "an operator creates an account and its key with `sparegrid admin account create NAME`"
)
# What to do next, for the errors a user causes most often.
HINTS = {
    "NO_API_KEY": CREATE_ACCOUNT,
    "BAD_API_KEY": CREATE_ACCOUNT,
    "INSUFFICIENT_CREDIT": "submit fewer tasks, or have an operator add credit with "
    "`sparegrid admin credit grant ACCOUNT AMOUNT`",
    "JOB_NOT_FOUND": "`sparegrid job list` shows the jobs of your account",
    "ACCOUNT_NOT_FOUND": "`sparegrid admin account list` shows the accounts",
    "STAKE_LOCKED": "stop your workers; the stake unlocks once they have been away for the "
    "lock time",
    "QUORUM_UNREACHABLE": "ask for fewer replicas (--replicas), or the adaptive policy (the "
    "default)",
    "JOB_NOT_RETRYABLE": "`sparegrid job get JOB_ID` shows its state; only a failed or "
    "cancelled job is retried",
    "ACCOUNT_DISABLED": "an operator disabled this account; `sparegrid admin account enable "
    "NAME` enables it again",
    "LAST_ADMIN": "create another admin account first: `sparegrid admin account create NAME "
    "--admin`",
    "BAD_AMOUNT": "a positive whole number of credit; `sparegrid admin credit debit NAME "
    "AMOUNT --reason WHY` takes credit away",
    "WORKER_TOO_OLD": "upgrade the worker: pip install -U sparegrid",
    "NOT_ADMIN": "use the admin key `coordinator serve` wrote to DATA_DIR/admin.key "
    "(--admin-key-file), or the key of an account made with --admin",
}


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
    return Client(args.coordinator, tls_ca=args.tls_ca)


def admin_client(args: argparse.Namespace) -> AdminClient:
    return AdminClient(args.coordinator, key_file=args.admin_key_file, tls_ca=args.tls_ca)


def short_reason(message: str) -> str:
    """gRPC's "failed to connect to all addresses; ...: Connection refused" -> the last part."""
    lower = message.lower()
    if any(s in lower for s in ("failed to connect", "resolving", "resolution failed")):
        return message.rsplit(": ", 1)[-1].strip("[] ")
    return message


def unreachable(args: argparse.Namespace, exc: UnavailableError) -> None:
    address = resolve_address(getattr(args, "coordinator", None))
    output.error(f"cannot reach coordinator at {address}: {short_reason(exc.message)}", exc.code)
    output.hint(
        "start one with `sparegrid coordinator serve`, or point --coordinator or "
        f"${ENV_ADDRESS} at a running one"
    )


def failed(exc: SparegridError) -> None:
    """One `error:` line in the user's terms, then what to do when we know it."""
    if exc.code == "NO_API_KEY":
        output.error(f"no API key: set ${ENV_API_KEY} to your account's key", exc.code)
    else:
        output.sparegrid_error(exc)
    if exc.code in HINTS:
        output.hint(HINTS[exc.code])


def run(handler: Handler, args: argparse.Namespace) -> int:
    """Runs a command: SDK errors become one `error:` line and exit 1, never a traceback."""
    try:
        return handler(args)
    except UnavailableError as exc:
        unreachable(args, exc)
    except SparegridError as exc:
        failed(exc)
    except OSError as exc:
        output.error(f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc))
    except KeyboardInterrupt:
        output.error("interrupted")
        return 130
    return 1
