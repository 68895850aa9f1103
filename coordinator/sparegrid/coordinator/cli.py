"""`sparegrid coordinator serve`: one command, SQLite inside, nothing to set up."""

import argparse
import asyncio
import gc
import logging
import os
import re
import signal
from pathlib import Path

from sparegrid.coordinator.app import App, Settings
from sparegrid.coordinator.blobs import keep_freed_memory
from sparegrid.coordinator.server import Tls, build_server, sparegrid_version
from sparegrid.coordinator.services.admission import AdmissionConfig
from sparegrid.coordinator.services.canaries import CanaryConfig
from sparegrid.coordinator.services.identity import Enrollment, IdentityConfig
from sparegrid.coordinator.services.jobs import parse_price
from sparegrid.coordinator.services.quotas import QuotaConfig
from sparegrid.coordinator.services.spotcheck import SpotConfig
from sparegrid.coordinator.services.sweeper import SweepConfig
from sparegrid.coordinator.store import open_store
from sparegrid.coordinator.store.base import Store, StoreError

log = logging.getLogger("sparegrid.coordinator")

ADMIN_ACCOUNT = "admin"


def register(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    group = subparsers.add_parser("coordinator", help="run the coordinator")
    commands = group.add_subparsers(dest="coordinator_command", required=True, metavar="COMMAND")
    serve = commands.add_parser("serve", help="serve the coordinator (SQLite by default)")
    env = os.environ.get
    serve.add_argument(
        "--listen",
        default=env("SPAREGRID_LISTEN", "127.0.0.1:50051"),
        metavar="HOST:PORT",
        help="address to listen on (port 0 picks a free one) [%(default)s]",
    )
    serve.add_argument(
        "--data-dir",
        type=Path,
        default=Path(env("SPAREGRID_COORDINATOR_DATA_DIR", "sparegrid-coordinator")),
        metavar="DIR",
        help="database, blobs and the admin key live here [%(default)s]",
    )
    serve.add_argument(
        "--database",
        default=env("SPAREGRID_DATABASE", ""),
        help="sqlite:///path.db or postgresql://... [DATA_DIR/coordinator.db]",
    )
    serve.add_argument("--tls-cert", type=Path, help="PEM certificate chain; enables TLS")
    serve.add_argument("--tls-key", type=Path, help="PEM private key for --tls-cert")
    serve.add_argument("--heartbeat", type=float, default=5.0, help="seconds [%(default)s]")
    serve.add_argument("--lease", type=float, default=30.0, help="lease seconds [%(default)s]")
    serve.add_argument(
        "--registration-rate",
        type=float,
        default=400.0,
        help="worker registrations admitted a second; more are told to retry later "
        "(0: no limit) [%(default)s]",
    )
    serve.add_argument(
        "--reconnect-grace",
        type=float,
        default=10.0,
        help="seconds a lost node's leases wait for it to come back [%(default)s]",
    )
    serve.add_argument("--max-blob-size", type=int, default=16 << 30, help="bytes [%(default)s]")
    serve.add_argument(
        "--price",
        action="append",
        default=[],
        metavar="KIND=CREDIT[/UNITS]",
        help="credit per UNITS work units of a job kind (repeatable; bytes for checksum, "
        "1 per echo task); default: echo=1, checksum=1/1048576, others 1",
    )
    serve.add_argument(
        "--canary-rate",
        type=float,
        default=0.02,
        metavar="SHARE",
        help="share of cross-checked results re-issued as known-answer tasks [%(default)s]",
    )
    serve.add_argument(
        "--spot-share",
        type=float,
        default=SpotConfig.share,
        metavar="SHARE",
        help="share of a PNG render task's pixels its spot check re-renders; 0 checks whole "
        "tasks [%(default)s]",
    )
    serve.add_argument(
        "--enrollment",
        choices=[e.value for e in Enrollment],
        default=env("SPAREGRID_ENROLLMENT", Enrollment.OPEN.value),
        help="which nodes may work: open (any; only nodes of owner accounts vote), approve "
        "(a new node works once `admin node approve` lets it), owners (only nodes of owner "
        "accounts may connect) [%(default)s]",
    )
    serve.add_argument(
        "--min-stake",
        type=int,
        default=0,
        metavar="CREDIT",
        help="credit an owner must stake (`sparegrid account stake`) for its nodes' results "
        "to count as votes [%(default)s]",
    )
    serve.add_argument(
        "--max-attempt-seconds",
        type=float,
        default=3600.0,
        metavar="S",
        help="longest a task may run on a node, heartbeats included (a worker's own limit "
        "when smaller), plus a quarter [%(default)s]",
    )
    _storage_flags(serve)
    serve.add_argument(
        "--wait-limit",
        type=parse_duration,
        default=parse_duration("24h"),
        metavar="DURATION",
        help="a job that no connected node can run fails after waiting this long, saying "
        "why (e.g. 90m, 24h, 2d, or seconds; 0 waits for ever) [24h]",
    )
    serve.add_argument(
        "--log-level",
        default=env("SPAREGRID_LOG_LEVEL", "INFO"),
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        type=str.upper,
        help="log verbosity [%(default)s]",
    )
    serve.set_defaults(func=serve_command)


_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
_UNITS |= {"kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}
_SECONDS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_AMOUNT = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*")


def parse_size(text: str) -> int:
    """Bytes from '64GiB', '500MB' or a plain number of bytes."""
    match = _AMOUNT.fullmatch(text)
    unit = _UNITS.get(match.group(2).lower()) if match else None
    if match is None or unit is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size like 64GiB or 500MB")
    return int(float(match.group(1)) * unit)


def parse_duration(text: str) -> float:
    """Seconds from '3d', '24h', '90m', '30s' or a plain number of seconds."""
    match = _AMOUNT.fullmatch(text)
    unit = _SECONDS.get(match.group(2).lower()) if match else None
    if match is None or unit is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 3d, 24h or 300")
    return float(match.group(1)) * unit


def _storage_flags(serve: argparse.ArgumentParser) -> None:
    """Quotas on uploads, and how long what nobody uses is kept."""
    quotas, sweeps = QuotaConfig(), SweepConfig()
    for flag, default, help_text in [
        ("--in-flight-quota", quotas.in_flight, "bytes of unfinished uploads an account may "
         "have, its nodes' included (at their announced size)"),
        ("--stored-quota", quotas.stored, "bytes an account (its nodes included) may hold "
         "in blobs it uploaded, each until collected or for --blob-retention after upload"),
        ("--anonymous-in-flight-quota", quotas.anonymous_in_flight, "bytes of unfinished "
         "uploads all nodes without an owner account may have together"),
        ("--anonymous-stored-quota", quotas.anonymous_stored, "bytes all nodes without an "
         "owner account may hold together in blobs they uploaded"),
    ]:  # fmt: skip
        shown = f"{default >> 30}GiB"
        serve.add_argument(
            flag, type=parse_size, default=default, metavar="SIZE", help=f"{help_text} [{shown}]"
        )
    for flag, seconds, help_text in [
        ("--upload-expiry", sweeps.upload_expiry, "an unfinished upload untouched this long "
         "is deleted"),
        ("--blob-retention", sweeps.blob_retention, "a blob no job needs (not an input of a "
         "job, not an output of one finished less than this long ago) is deleted this long "
         "after its last upload"),
        ("--node-expiry", sweeps.node_expiry, "a node that never worked is forgotten when "
         "unseen this long"),
        ("--sweep-interval", sweeps.interval, "how often expired uploads, blobs and nodes "
         "are deleted"),
    ]:  # fmt: skip
        serve.add_argument(
            flag,
            type=parse_duration,
            default=seconds,
            metavar="DURATION",
            help=f"{help_text}; seconds, or 30m, 24h, 3d [{seconds:g} s]",
        )


def _storage_settings(args: argparse.Namespace) -> tuple[QuotaConfig, SweepConfig]:
    for name in ("upload_expiry", "blob_retention", "node_expiry", "sweep_interval"):
        if getattr(args, name) <= 0:
            raise SystemExit(f"error: --{name.replace('_', '-')} must be positive")
    quotas = QuotaConfig(
        in_flight=args.in_flight_quota,
        stored=args.stored_quota,
        anonymous_in_flight=args.anonymous_in_flight_quota,
        anonymous_stored=args.anonymous_stored_quota,
    )
    sweeps = SweepConfig(
        interval=args.sweep_interval,
        upload_expiry=args.upload_expiry,
        blob_retention=args.blob_retention,
        node_expiry=args.node_expiry,
    )
    return quotas, sweeps


def _settings(args: argparse.Namespace) -> Settings:
    if (args.tls_cert is None) != (args.tls_key is None):
        raise SystemExit("error: --tls-cert and --tls-key go together")
    for name, value in [("--heartbeat", args.heartbeat), ("--lease", args.lease)]:
        if value <= 0:
            raise SystemExit(f"error: {name} must be positive, got {value}")
    if args.lease <= args.heartbeat:
        raise SystemExit("error: --lease must be longer than --heartbeat")
    if args.min_stake < 0 or args.max_attempt_seconds <= 0:
        raise SystemExit("error: --min-stake must be 0 or more, --max-attempt-seconds positive")
    settings = Settings(
        data_dir=args.data_dir,
        heartbeat_seconds=args.heartbeat,
        lease_seconds=args.lease,
        reconnect_grace_seconds=args.reconnect_grace,
        max_blob_size=args.max_blob_size,
        canaries=CanaryConfig(rate=args.canary_rate),
        spot_checks=SpotConfig(share=args.spot_share),
        identity=IdentityConfig(Enrollment(args.enrollment), min_stake=args.min_stake),
        max_attempt_seconds=args.max_attempt_seconds,
        wait_limit_seconds=args.wait_limit,
    )
    settings.quotas, settings.sweeps = _storage_settings(args)
    if args.registration_rate < 0:
        raise SystemExit(
            f"error: --registration-rate must be 0 or more, got {args.registration_rate}"
        )
    rate = args.registration_rate
    settings.admission = AdmissionConfig(rate=rate, burst=max(1, int(rate)))
    for name, share in [("--canary-rate", args.canary_rate), ("--spot-share", args.spot_share)]:
        if not 0.0 <= share <= 1.0:
            raise SystemExit(f"error: {name} is a share from 0 to 1, got {share}")
    for item in args.price:
        kind, _, value = item.partition("=")
        try:
            settings.prices[kind] = parse_price(value)
        except ValueError as exc:
            raise SystemExit(
                f"error: --price takes KIND=CREDIT[/UNITS], got {item!r}: {exc}"
            ) from None
    return settings


def _write_secret(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text + "\n")
    os.replace(tmp, path)


def ensure_admin(app: App, data_dir: Path) -> Path:
    """Creates the admin account on first start; its key goes to DATA_DIR/admin.key."""
    key_file = data_dir / "admin.key"
    if app.store.get_account_by_name(ADMIN_ACCOUNT) is None:
        _, key = app.accounts.create(ADMIN_ACCOUNT, 0, is_admin=True)
        _write_secret(key_file, key)
        log.info("created the admin account; its API key is in %s", key_file)
    elif not key_file.exists():
        log.warning("%s is missing: admin commands need the key saved at first start", key_file)
    return key_file


def _user_key_file(host: str, port: int) -> Path:
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "sparegrid" / "admin" / f"{host}_{port}.key"


def open_app(args: argparse.Namespace) -> tuple[App, Store]:
    settings = _settings(args)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    url = args.database or f"sqlite:///{settings.data_dir / 'coordinator.db'}"
    store = open_store(url)
    return App(store, settings), store


async def serve(args: argparse.Namespace) -> None:
    keep_freed_memory()  # the coordinator process is ours to tune; see blobs.py
    app, store = open_app(args)
    tls = Tls(args.tls_cert, args.tls_key) if args.tls_cert else None
    try:
        server, port = await build_server(app, args.listen, tls)
    except OSError:
        store.close()
        raise
    key_file = ensure_admin(app, args.data_dir)
    app.start()
    # What start-up made (modules, the loaded queues) lives for good: frozen, it stays out
    # of the collector's full passes, which otherwise walk all of it and hold the event
    # loop for tens of milliseconds each (bench/submit_stall.py).
    gc.collect()
    gc.freeze()
    await server.start()
    host = args.listen.rpartition(":")[0].strip("[]") or "127.0.0.1"
    address = f"{host}:{port}"
    if key_file.exists():
        _write_secret(_user_key_file(host, port), key_file.read_text().strip())
    # local clients verify countersigned receipts against this key (pinned, as on first use)
    pin = _user_key_file(host, port).parent.parent / "coordinators" / f"{host}_{port}.pub"
    pin.parent.mkdir(parents=True, exist_ok=True)
    pin.write_text(app.signer.public_key.hex() + "\n")
    (args.data_dir / "coordinator.addr").write_text(address + "\n")
    log.info(
        "sparegrid %s coordinator serving on %s (%s); admin key: %s",
        sparegrid_version(),
        address,
        "TLS" if tls else "plaintext",
        key_file,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down")
    await server.stop(grace=2)
    await app.stop()


def serve_command(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        asyncio.run(serve(args))
    except (OSError, StoreError) as exc:  # a damaged database says which file, and why
        log.error("%s", exc)
        return 1
    return 0
