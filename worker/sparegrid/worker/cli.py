"""`sparegrid worker run`, `worker status`, `worker pause|snooze|resume`, `worker credit`
and `worker id`.

Settings are layered: defaults < TOML file < SPAREGRID_WORKER_* environment < flags,
validated once (see sparegrid.worker.settings).
"""

import argparse
import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sparegrid.wire import Signer
from sparegrid.wire.config import to_duration
from sparegrid.worker.config import DEFAULT_COORDINATOR, ConfigError, WorkerConfig
from sparegrid.worker.logs import configure_logging
from sparegrid.worker.node.devices import DeviceInfo, detect_devices
from sparegrid.worker.node.identity import load_identity, lock_data_dir
from sparegrid.worker.node.status import (
    StatusUnavailable,
    read_status,
    render,
    send_command,
    status_line,
)
from sparegrid.worker.policy.pause import PauseError, check_seconds
from sparegrid.worker.settings import (
    ENV_CONFIG,
    ENV_OWNER_KEY,
    add_flags,
    layered,
    read_file,
    read_owner_key,
)
from sparegrid.worker.startup import choose_devices

if TYPE_CHECKING:
    from sparegrid.worker.daemon import Worker

ENV_DATA_DIR = "SPAREGRID_WORKER_DATA_DIR"
ENV_STATUS_SOCKET = "SPAREGRID_WORKER_STATUS_SOCKET"
ENV_COORDINATOR = "SPAREGRID_COORDINATOR"
DEFAULT_DATA_DIR = "sparegrid-worker"
STATUS_LINE_SECONDS = 1.0
SNOOZE = "1h"


def register(subparsers: "argparse._SubParsersAction[Any]") -> None:
    """Adds the `worker` command group to the `sparegrid` CLI."""
    worker = subparsers.add_parser("worker", help="lend this machine's GPUs to a coordinator")
    commands = worker.add_subparsers(dest="worker_command", metavar="COMMAND", required=True)
    run = commands.add_parser(
        "run",
        help="run the worker daemon until SIGTERM or Ctrl-C",
        description="Settings come from a TOML file (--config), then SPAREGRID_WORKER_* "
        "environment variables, then these flags; each is checked at start.",
    )
    add_flags(run)
    run.set_defaults(func=run_command)
    credit = commands.add_parser(
        "credit",
        help="this node's credit and every ledger entry behind it (needs the owner's key)",
        description="Lists this node's credit and the entries that explain it: job, task "
        f"and reason. Authenticates with the owner's API key ({ENV_OWNER_KEY}, or "
        "SPAREGRID_API_KEY); the node must have connected with that owner key.",
    )
    _data_dir_flag(credit)
    credit.add_argument("--coordinator", metavar="HOST:PORT", help="coordinator address")
    credit.add_argument(
        "--owner-key-file",
        type=Path,
        metavar="FILE",
        help=f"file holding the owner's API key, as `worker run` takes it (else {ENV_OWNER_KEY})",
    )
    credit.add_argument("--limit", type=int, default=100, metavar="N", help="entries (100)")
    credit.set_defaults(func=credit_command)
    ident = commands.add_parser("id", help="print this node's id and public key")
    _data_dir_flag(ident)
    ident.set_defaults(func=id_command)
    status = commands.add_parser("status", help="devices, tasks and credit of the running worker")
    _data_dir_flag(status)
    status.add_argument("--status-socket", type=Path, metavar="PATH", help="the daemon's socket")
    status.add_argument("--config", type=Path, metavar="TOML", help="the worker's settings file")
    status.add_argument("--json", action="store_true", help="print the raw JSON snapshot")
    status.set_defaults(func=status_command)
    _control_commands(commands)


def _control_commands(commands: "argparse._SubParsersAction[Any]") -> None:
    """`worker pause`, `snooze` and `resume`: they talk to the running daemon's socket."""
    pause = commands.add_parser(
        "pause",
        help="stop lending now (running tasks are handed back), until `worker resume`",
        description="Pauses the running worker without a restart: its running tasks are "
        "stopped and handed back (not held against the node), and it takes no new work "
        "until `sparegrid worker resume`, or until the --for time is up. A restart keeps it.",
    )
    pause.add_argument("--for", dest="duration", metavar="DURATION", help="e.g. 90m, 2h, 1d")
    snooze = commands.add_parser(
        "snooze",
        help=f"pause for {SNOOZE} (or --for), then lend again by itself",
        description=f"`worker pause --for {SNOOZE}`: stops lending now, resumes by itself.",
    )
    snooze.add_argument(
        "--for", dest="duration", metavar="DURATION", default=SNOOZE, help=f"({SNOOZE})"
    )
    resume = commands.add_parser("resume", help="lift a pause or snooze now")
    for parser in (pause, snooze, resume):
        _data_dir_flag(parser)
        parser.add_argument("--status-socket", type=Path, metavar="PATH", help="the socket")
        parser.add_argument("--config", type=Path, metavar="TOML", help="the settings file")
    for parser in (pause, snooze):
        # `--for -1h` is a (wrong) value, answered by pause_command: argparse takes only
        # "-1" or "-1.5" for a negative number, and anything else that starts with "-"
        # for an option, ending in "expected one argument"
        parser._negative_number_matcher = re.compile(r"^-\.?\d")
        parser.set_defaults(func=pause_command)
    resume.set_defaults(func=resume_command)


def _data_dir_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        type=Path,
        metavar="DIR",
        help=f"where the node key, cache and outbox live (env {ENV_DATA_DIR}; "
        f"default ./{DEFAULT_DATA_DIR})",
    )


def data_dir_from(args: argparse.Namespace, env: Mapping[str, str]) -> Path:
    return Path(args.data_dir or env.get(ENV_DATA_DIR) or DEFAULT_DATA_DIR)


def config_from(args: argparse.Namespace, env: Mapping[str, str]) -> WorkerConfig:
    """TOML file < environment < flags over defaults; raises ConfigError on a bad value."""
    return layered(args, env)


def describe_device(device: DeviceInfo) -> str:
    details = [device.kind, f"{device.memory_bytes / 2**30:.1f} GiB"]
    if device.compute_capability:
        details.append(f"compute {device.compute_capability}")
    details.append(device.backend)
    return f"device {device.index}: {device.name} ({', '.join(details)})"


def _identity(args: argparse.Namespace) -> Signer | None:
    """The node's key from its data directory; None (and a line on stderr) when unreadable."""
    try:
        return load_identity(data_dir_from(args, os.environ))
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None


def id_command(args: argparse.Namespace) -> int:
    signer = _identity(args)
    if signer is None:
        return 2
    print(f"node id:    {signer.node_id}")
    print(f"public key: {signer.public_key.hex()}")
    return 0


def _status_path(args: argparse.Namespace, env: Mapping[str, str]) -> Path:
    """Flag, environment, the worker's settings file, then DATA_DIR/status.sock."""
    config_path = args.config or env.get(ENV_CONFIG)
    from_file = read_file(Path(config_path)) if config_path else {}
    socket_path = args.status_socket or env.get(ENV_STATUS_SOCKET) or from_file.get("status_socket")
    if socket_path:
        return Path(socket_path)
    data_dir = (
        args.data_dir or env.get(ENV_DATA_DIR) or from_file.get("data_dir") or DEFAULT_DATA_DIR
    )
    return Path(data_dir) / "status.sock"


def status_command(args: argparse.Namespace) -> int:
    try:
        snapshot = read_status(_status_path(args, os.environ))
    except (StatusUnavailable, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(snapshot, indent=2) if args.json else render(snapshot))
    return 0


def pause_command(args: argparse.Namespace) -> int:
    seconds = None
    if args.duration is not None:
        try:
            seconds = check_seconds(to_duration(args.duration))
        except ValueError as exc:  # PauseError too
            print(f"error: --for {args.duration!r} {_why(args.duration, exc)}", file=sys.stderr)
            return 2
    return _control(args, {"pause": seconds})


def _why(duration: str, exc: ValueError) -> str:
    if duration.strip().startswith("-"):
        why = "must be more than 0 seconds: give a duration like 90m, 2h or 1d"
    elif isinstance(exc, PauseError):
        why = str(exc).replace("the pause length ", "") + ": give one like 90m, 2h or 1d"
    else:
        why = str(exc)  # "is not a duration like 3d, 24h, 90m or 300 (seconds)"
    return f"{why}; nothing was paused"


def resume_command(args: argparse.Namespace) -> int:
    return _control(args, {"resume": True})


def _control(args: argparse.Namespace, command: dict[str, Any]) -> int:
    """Sends one command to the daemon and says what it did."""
    try:
        answer = send_command(_status_path(args, os.environ), command)
    except (StatusUnavailable, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if "error" in answer or not answer.get("ok"):
        print(f"error: the worker refused: {answer.get('error', answer)}", file=sys.stderr)
        return 1
    pause = answer.get("pause")
    if pause:
        print(f"paused {pause.get('reason')}: running tasks are handed back, no new work")
    elif answer.get("was_paused"):
        print("resumed: the worker lends its devices again")
    else:
        print("the worker was not paused")
    return 0


def credit_command(args: argparse.Namespace) -> int:
    from sparegrid.sdk import Client, SparegridError

    signer = _identity(args)
    if signer is None:
        return 2
    key = os.environ.get(ENV_OWNER_KEY) or os.environ.get("SPAREGRID_API_KEY") or None
    if args.owner_key_file is not None:
        try:
            key = read_owner_key(args.owner_key_file) or None
        except ConfigError as exc:
            print(f"error: --owner-key-file: {exc}", file=sys.stderr)
            return 2
    if key is None:
        print(
            f"error: no owner key: pass --owner-key-file FILE (the one `worker run` uses) or set "
            f"{ENV_OWNER_KEY} to the API key of the account that owns this node",
            file=sys.stderr,
        )
        return 2
    address = args.coordinator or os.environ.get(ENV_COORDINATOR) or DEFAULT_COORDINATOR
    try:
        with Client(address, key) as client:
            view = client.node_credit(signer.node_id, args.limit)
    except SparegridError as exc:
        print(f"error: {exc.message} [{exc.code}]", file=sys.stderr)
        return 1
    standing = view.standing + (f" ({view.standing_reason})" if view.standing_reason else "")
    print(f"node {view.node_id}, owner {view.owner}, {standing}")
    print(f"credit: {view.balance} in the coordinator's ledger")
    print(f"{view.validated} results validated, {view.invalid} invalid")
    for e in view.entries:
        when = e.created_at.isoformat(timespec="seconds") if e.created_at else "-"
        print(f"{when}  {e.amount:+d}  job {e.job_id or '-'}  task {e.task_id or '-'}  {e.reason}")
    return 0


def run_command(args: argparse.Namespace) -> int:
    try:
        config = config_from(args, os.environ)
        detection = choose_devices(config, detect_devices())  # before a key is made
        lock_data_dir(config.data_dir)  # held until this process ends
        signer = load_identity(config.data_dir)
    except (ConfigError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    live = sys.stderr.isatty() and not config.log_json
    configure_logging(config.log_json, live_line=live)
    print(f"node id: {signer.node_id} ({config.name}), coordinator {config.coordinator}")
    for device in detection.devices:
        print(f"  {describe_device(device)}")
    print(f"  {detection.summary}", flush=True)
    try:
        return asyncio.run(
            _serve(config, detection.devices, live, lambda: config_from(args, os.environ))
        )
    except ConfigError as exc:  # e.g. --sandbox require where isolation is incomplete
        print(f"error: {exc}", file=sys.stderr)
        return 2


async def _status_line(worker: "Worker") -> None:
    """Redraws one line on the terminal with each device's state and today's credit."""
    while True:
        with contextlib.suppress(OSError):
            sys.stderr.write("\r\x1b[K" + status_line(worker.status())[:200])
            sys.stderr.flush()
        await asyncio.sleep(STATUS_LINE_SECONDS)


async def _serve(
    config: WorkerConfig,
    devices: tuple[DeviceInfo, ...],
    live: bool,
    reread: Callable[[], WorkerConfig],
) -> int:
    from sparegrid.worker.daemon import Worker  # gRPC is imported only by commands that use it

    worker = Worker(config, devices=devices)
    line = asyncio.create_task(_status_line(worker)) if live else None
    signals = 0

    def on_signal() -> None:
        nonlocal signals
        signals += 1
        worker.shutdown(force=signals > 1)
        if signals == 1:
            with contextlib.suppress(OSError):  # stderr may be a closed pipe
                print("draining: finishing held tasks (signal again to stop now)", file=sys.stderr)

    def on_hangup() -> None:  # SIGHUP: the limits in the settings file, read again
        try:
            worker.reload(reread())
        except ConfigError as exc:
            logging.getLogger("sparegrid.worker").error(
                "settings not reloaded, the limits in force stay: %s", exc
            )

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal)
    loop.add_signal_handler(signal.SIGHUP, on_hangup)
    try:
        await worker.run()
    finally:
        if line is not None:
            line.cancel()
            sys.stderr.write("\n")
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(signum)
    return 0
