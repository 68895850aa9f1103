"""`sparegrid worker run` and `sparegrid worker id`.

Settings are layered: defaults < SPAREGRID_* environment < flags, validated once.
"""

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sparegrid.worker.config import DEFAULT_COORDINATOR, ConfigError, WorkerConfig
from sparegrid.worker.devices import DeviceInfo, detect_devices
from sparegrid.worker.identity import load_identity
from sparegrid.worker.logs import configure_logging

ENV_COORDINATOR = "SPAREGRID_COORDINATOR"
ENV_DATA_DIR = "SPAREGRID_WORKER_DATA_DIR"
ENV_NAME = "SPAREGRID_WORKER_NAME"
ENV_TLS_CA = "SPAREGRID_TLS_CA"
ENV_PREFETCH = "SPAREGRID_WORKER_PREFETCH"
ENV_LOG_JSON = "SPAREGRID_LOG_JSON"
ENV_OWNER_KEY = "SPAREGRID_OWNER_KEY"
DEFAULT_DATA_DIR = "sparegrid-worker"


def register(subparsers: "argparse._SubParsersAction[Any]") -> None:
    """Adds the `worker` command group to the `sparegrid` CLI."""
    worker = subparsers.add_parser("worker", help="lend this machine's GPUs to a coordinator")
    commands = worker.add_subparsers(dest="worker_command", metavar="COMMAND", required=True)
    run = commands.add_parser("run", help="run the worker daemon until SIGTERM or Ctrl-C")
    run.add_argument(
        "--coordinator",
        metavar="HOST:PORT",
        help=f"coordinator address (env {ENV_COORDINATOR}; default {DEFAULT_COORDINATOR})",
    )
    _data_dir_flag(run)
    run.add_argument("--name", help=f"label for this node (env {ENV_NAME}; default: host name)")
    run.add_argument(
        "--tls-ca", type=Path, metavar="PEM", help=f"CA certificate for TLS (env {ENV_TLS_CA})"
    )
    run.add_argument(
        "--prefetch", type=int, help=f"tasks held per device (env {ENV_PREFETCH}; default 2)"
    )
    run.add_argument(
        "--log-json", action="store_true", default=None, help=f"JSON log lines (env {ENV_LOG_JSON})"
    )
    run.add_argument(
        "--owner-key-file",
        type=Path,
        metavar="FILE",
        help=f"file holding the API key of the account that owns this node (env "
        f"{ENV_OWNER_KEY}); the coordinator never sends two copies of a task to nodes of one "
        "owner, and the owner sees the node's credit with `sparegrid worker credit`",
    )
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
    credit.add_argument("--limit", type=int, default=100, metavar="N", help="entries (100)")
    credit.set_defaults(func=credit_command)
    ident = commands.add_parser("id", help="print this node's id and public key")
    _data_dir_flag(ident)
    ident.set_defaults(func=id_command)


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
    """Flags over environment over defaults; raises ConfigError on a bad value."""
    settings: dict[str, Any] = {
        "coordinator": args.coordinator or env.get(ENV_COORDINATOR) or DEFAULT_COORDINATOR,
        "data_dir": data_dir_from(args, env),
    }
    name = args.name or env.get(ENV_NAME)
    if name:
        settings["name"] = name
    tls_ca = args.tls_ca or env.get(ENV_TLS_CA)
    if tls_ca:
        settings["tls_ca"] = Path(tls_ca)
    prefetch = args.prefetch if args.prefetch is not None else env.get(ENV_PREFETCH)
    if prefetch is not None:
        settings["prefetch"] = _int(prefetch, ENV_PREFETCH)
    owner_file = getattr(args, "owner_key_file", None)
    if owner_file is not None:
        try:
            settings["owner_key"] = Path(owner_file).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read --owner-key-file {owner_file}: {exc}") from None
    elif env.get(ENV_OWNER_KEY):
        settings["owner_key"] = env[ENV_OWNER_KEY].strip()
    log_json = args.log_json if args.log_json is not None else env.get(ENV_LOG_JSON)
    settings["log_json"] = str(log_json).lower() in ("1", "true", "yes", "on")
    return WorkerConfig(**settings)


def _int(value: object, source: str) -> int:
    try:
        return int(str(value))
    except ValueError:
        raise ConfigError(f"{source} must be an integer, got {value!r}") from None


def describe_device(device: DeviceInfo) -> str:
    details = [device.kind, f"{device.memory_bytes / 2**30:.1f} GiB"]
    if device.compute_capability:
        details.append(f"compute {device.compute_capability}")
    details.append(device.backend)
    return f"device {device.index}: {device.name} ({', '.join(details)})"


def id_command(args: argparse.Namespace) -> int:
    try:
        signer = load_identity(data_dir_from(args, os.environ))
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"node id:    {signer.node_id}")
    print(f"public key: {signer.public_key.hex()}")
    return 0


def credit_command(args: argparse.Namespace) -> int:
    from sparegrid.sdk import Client, SparegridError

    try:
        signer = load_identity(data_dir_from(args, os.environ))
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    key = os.environ.get(ENV_OWNER_KEY) or os.environ.get("SPAREGRID_API_KEY") or None
    address = args.coordinator or os.environ.get(ENV_COORDINATOR) or DEFAULT_COORDINATOR
    try:
        with Client(address, key) as client:
            view = client.node_credit(signer.node_id, args.limit)
    except SparegridError as exc:
        print(f"error: {exc.message} [{exc.code}]", file=sys.stderr)
        return 1
    standing = view.standing + (f" ({view.standing_reason})" if view.standing_reason else "")
    print(f"node {view.node_id}, owner {view.owner}: {view.balance} credit, {standing}")
    print(f"{view.validated} results validated, {view.invalid} invalid")
    for e in view.entries:
        when = e.created_at.isoformat(timespec="seconds") if e.created_at else "-"
        print(f"{when}  {e.amount:+d}  job {e.job_id or '-'}  task {e.task_id or '-'}  {e.reason}")
    return 0


def run_command(args: argparse.Namespace) -> int:
    try:
        config = config_from(args, os.environ)
        signer = load_identity(config.data_dir)
    except (ConfigError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    configure_logging(config.log_json)
    detection = detect_devices()
    print(f"node id: {signer.node_id} ({config.name}), coordinator {config.coordinator}")
    for device in detection.devices:
        print(f"  {describe_device(device)}")
    print(f"  {detection.summary}", flush=True)
    return asyncio.run(_serve(config, detection.devices))


async def _serve(config: WorkerConfig, devices: tuple[DeviceInfo, ...]) -> int:
    from sparegrid.worker.daemon import Worker  # gRPC is imported only by commands that use it

    worker = Worker(config, devices=devices)
    signals = 0

    def on_signal() -> None:
        nonlocal signals
        signals += 1
        worker.shutdown(force=signals > 1)
        if signals == 1:
            with contextlib.suppress(OSError):  # stderr may be a closed pipe
                print("draining: finishing held tasks (signal again to stop now)", file=sys.stderr)

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal)
    try:
        await worker.run()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    return 0
