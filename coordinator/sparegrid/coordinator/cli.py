"""`sparegrid coordinator serve`: one command, SQLite inside, nothing to set up."""

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import signal
import ssl
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import NamedTuple

from sparegrid.coordinator import config, maintenance
from sparegrid.coordinator.app import App
from sparegrid.coordinator.blobs import keep_freed_memory
from sparegrid.coordinator.config import ServeConfig
from sparegrid.coordinator.errors import CoordinatorError
from sparegrid.coordinator.server import Tls, build_server, sparegrid_version
from sparegrid.coordinator.services.inputs import fail_job, held, lacking
from sparegrid.coordinator.services.webhooks import WebhookConfig
from sparegrid.coordinator.settings import Settings
from sparegrid.coordinator.store import COORDINATOR_KEY, open_store, peek_meta
from sparegrid.coordinator.store.base import Store, StoreError, StoreTaken, StoreUnavailable
from sparegrid.coordinator.web import serve as operations
from sparegrid.wire import Signer
from sparegrid.wire.config import ConfigError, to_duration

log = logging.getLogger("sparegrid.coordinator")

ADMIN_ACCOUNT = "admin"


def register(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    group = subparsers.add_parser("coordinator", help="run the coordinator")
    commands = group.add_subparsers(dest="coordinator_command", required=True, metavar="COMMAND")
    serve = commands.add_parser(
        "serve",
        help="serve the coordinator (SQLite by default)",
        description="Settings: defaults < TOML file (--config) < environment < flags; "
        "deploy/coordinator.toml documents every key.",
    )
    config.add_flags(serve)
    serve.add_argument(
        "--webhook-allow-private",
        action="store_true",
        help="let job webhooks call loopback, private and link-local addresses (refused by "
        "default: a client could otherwise make the coordinator reach its own network)",
    )
    operations.add_flags(serve)
    serve.set_defaults(func=serve_command)
    maintenance.register(commands)


def parse_duration(text: str) -> float:
    """Seconds from '3d', '24h', '90m', '30s' or a plain number of seconds (for argparse)."""
    try:
        return to_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} {exc}") from None


def serve_config(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> ServeConfig:
    """The layered settings; a bad one exits with a message naming it and where it was set."""
    try:
        return config.load(args, os.environ if env is None else env)
    except ConfigError as exc:
        raise SystemExit(f"error: {exc}") from None


def _settings(args: argparse.Namespace) -> Settings:
    return serve_config(args).settings


def _write_whole(path: Path, text: str, mode: int = 0o666) -> None:
    """Writes a temporary file, created with `mode` (less the umask), and renames it into
    place: a reader (scripts poll for coordinator.addr) never finds the file created but
    still empty."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _write_secret(path: Path, text: str) -> None:
    _write_whole(path, text + "\n", 0o600)


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


def usable_admin_key(app: App, key_file: Path) -> str | None:
    """The key DATA_DIR/admin.key holds, if it still opens an enabled admin account; None
    when it is missing, or when it was rotated (`admin key rotate admin`) or revoked since:
    recording such a key for admin commands put back the stale one they had replaced."""
    if not key_file.exists():
        return None
    key = key_file.read_text().strip()
    try:
        account = app.accounts.authenticate(key)
    except CoordinatorError:
        account = None
    if account is None or not account.is_admin:
        log.warning(
            "%s no longer opens an admin account (its key was rotated or revoked, or the "
            "account disabled): put the current admin key in it; admin commands on this "
            "machine keep the key they have",
            key_file,
        )
        return None
    return key


def _user_key_file(host: str, port: int) -> Path:
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "sparegrid" / "admin" / f"{host}_{port}.key"


# A coordinator listening on every address (0.0.0.0, [::]) serves this machine's clients at
# loopback too, where commands look by default (--coordinator 127.0.0.1:50051): its admin
# key and its pin are recorded for those addresses as well.
_LOOPBACK_OF = {"0.0.0.0": ("127.0.0.1",), "::": ("127.0.0.1", "::1")}


def _record_for_this_user(signer: Signer, admin_key: str | None, host: str, port: int) -> None:
    """The admin key (for admin commands) and the coordinator's public key (the pin local
    clients verify countersigned receipts against, as on first use), recorded under
    $XDG_CONFIG_HOME/sparegrid/ for each address this machine reaches the coordinator at."""
    for local in (host, *_LOOPBACK_OF.get(host, ())):
        if admin_key:
            _write_secret(_user_key_file(local, port), admin_key)
        pin = _user_key_file(local, port).parent.parent / "coordinators" / f"{local}_{port}.pub"
        pin.parent.mkdir(parents=True, exist_ok=True)
        _write_whole(pin, signer.public_key.hex() + "\n")


STANDBY_POLL_SECONDS = 1.0  # how often a standing-by coordinator tries to take over
# A standby with blobs in its own data directory served, after a takeover, jobs whose inputs
# were in the other one's: every attempt failed INPUT_UNAVAILABLE and the jobs stalled.
LOCAL_BLOBS_STANDBY = (
    "this coordinator keeps blobs in %s (--blobs local), not where the serving one keeps "
    "them: after a takeover, inputs and outputs uploaded to the other are missing (tasks "
    "fail INPUT_UNAVAILABLE, results cannot be fetched); give every coordinator of this "
    "database the same --blobs s3://BUCKET/PREFIX"
)


def make_private_dir(path: Path) -> None:
    """The data directory, made readable by this user only: it holds the clients' inputs and
    outputs and the database (their jobs, the ledger). One made before is left as it is, with
    a warning (once, at start) when others may read it."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    mode = path.stat().st_mode & 0o777
    if mode & 0o007:
        log.warning(
            "%s is readable by other users (mode %o): it holds the clients' data and the "
            "ledger; run: chmod 700 %s",
            path,
            mode,
            path,
        )


def open_app(serving: ServeConfig) -> tuple[App, Store]:
    settings = serving.settings
    settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    store = open_store(serving.database_url, exclusive=True)
    try:
        app = App(store, settings)
        mine = app.signer.public_key.hex()
        check_key(settings.key_path, app.signer, store.claim_meta(COORDINATOR_KEY, mine))
        return app, store
    except BaseException:
        store.close()
        raise


def check_key(path: Path, signer: Signer, recorded: str) -> None:
    """All the coordinators of a database countersign with one key: clients pin it and its
    receipts name it. The first to serve from the database records its public key there;
    one holding another key (a wrong copy on a standby, a data directory whose key was
    made afresh) refuses to serve, rather than sign what every client would refuse."""
    mine = signer.public_key.hex()
    if recorded and recorded != mine:
        raise StoreError(
            f"{path} holds the key {mine[:16]}…, but this database's coordinators "
            f"countersign with {recorded[:16]}… (clients pin it, and its receipts name it): "
            "copy coordinator.key from a coordinator that served from this database (mode 600)"
        )


def check_standby_key(serving: ServeConfig, taken: StoreTaken) -> None:
    """A standby signs with the serving coordinator's key once it takes over (clients pin
    it): its copy must be here, readable by this user only, and the key the database
    records, before it stands by, not found wanting at the takeover."""
    path = serving.settings.key_path
    if not path.exists():
        raise StoreError(
            f"{taken}; a coordinator standing by for it needs its key: copy coordinator.key "
            f"from that coordinator's data directory to {path} (mode 600)"
        )
    signer = Signer.load_or_create(path)  # refuses a key others can read, or not a key
    check_key(path, signer, peek_meta(serving.database_url, COORDINATOR_KEY))


class Opened(NamedTuple):
    app: App
    store: Store
    key_file: Path  # DATA_DIR/admin.key
    admin_key: str | None  # what it holds, if it opens an admin account: recorded for users


async def take_over(
    serving: ServeConfig,
    stop: asyncio.Event,
    standing_by: Callable[[str], Awaitable[None]] | None = None,
) -> Opened | None:
    """The app, once this coordinator holds the database. While another coordinator
    serves from the same PostgreSQL database, this one stands by, not listening (clients
    and workers given both addresses stay with the one that answers), and takes over
    within a second of that one's end. None when stopped while standing by. The admin
    account is checked and the app started here too, before anything listens: a standby
    that loses the database while taking over (a database failover, its backend terminated) stands by
    again, where it exited. standing_by, when given, is awaited once it starts standing by,
    with what it stands by for (the database, named without its password)."""
    make_private_dir(serving.settings.data_dir)
    waiting = False
    while True:
        try:
            return _opened(serving)
        except StoreUnavailable as exc:
            if not waiting:
                raise
            log.warning("lost the database while taking over (%s); standing by again", exc)
        except StoreTaken as exc:
            if not waiting:
                check_standby_key(serving, exc)
                log.warning("standing by: %s; this one serves when that one stops", exc)
                admin_key = serving.settings.data_dir / "admin.key"
                if not admin_key.exists():  # found at the takeover, it was too late to copy
                    log.warning(
                        "%s is missing: once this one serves, admin commands need it; copy "
                        "admin.key from the serving coordinator's data directory (mode 600)",
                        admin_key,
                    )
                if serving.settings.blobs == "local":
                    log.warning(LOCAL_BLOBS_STANDBY, serving.settings.data_dir / "blobs")
                waiting = True
                if standing_by is not None:
                    await standing_by(str(exc))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), STANDBY_POLL_SECONDS)
            return None


def _opened(serving: ServeConfig) -> Opened:
    """The app, its admin account made if need be, started (the queues loaded), the jobs
    it cannot run failed, and the admin key to record: all that reads the database before
    this coordinator listens."""
    app, store = open_app(serving)
    try:
        key_file = ensure_admin(app, serving.settings.data_dir)
        app.start()  # its background work starts once what it needs is loaded
        fail_missing_inputs(app)  # before a worker can connect and fail their tasks
        return Opened(app, store, key_file, usable_admin_key(app, key_file))
    except BaseException:
        app.abandon()  # nothing awaited since start(): none of its tasks ran
        store.close()
        raise


def check_tls(tls: Tls) -> None:
    """The certificate and key load, and match; OSError naming the flag and the file if not
    (gRPC said "cannot listen ...: the address is in use" for a swapped or damaged pair).
    A key other users can read is served, with a warning."""
    for flag, path in (("--tls-cert", tls.cert), ("--tls-key", tls.key)):
        if not path.is_file():
            raise OSError(f"{flag} {path}: no such file")
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(tls.cert, tls.key)
    except (ssl.SSLError, OSError) as exc:
        raise OSError(
            f"--tls-cert {tls.cert} and --tls-key {tls.key} do not load as a certificate "
            f"(PEM, the chain first) and its private key ({exc}): are they swapped, or not "
            "a pair?"
        ) from None
    mode = tls.key.stat().st_mode & 0o777
    if mode & 0o077:
        log.warning(
            "%s, the TLS private key, is readable by others (mode %o): run chmod 600 %s",
            tls.key,
            mode,
            tls.key,
        )


def fail_missing_inputs(app: App) -> int:
    """Fails, with INPUT_UNAVAILABLE, the unfinished jobs whose inputs this coordinator's
    local blob store lacks (a standby that took over from one keeping blobs in its own
    data directory, a data directory restored without its blobs). No task of theirs can
    run here: every attempt failed INPUT_UNAVAILABLE and the job stalled until the wait
    limit, with one line in the log. Their clients keep what ran and get the rest of
    their held credit back. After `app.start()` (the jobs loaded). How many jobs."""
    if app.settings.blobs != "local":
        return 0
    present: dict[str, bool] = {}

    def here(digest: str) -> bool:
        if digest not in present:
            present[digest] = held(app.blobs, app.store, digest)
        return present[digest]

    why = (
        f"is not on the coordinator serving now (blobs in {app.blobs.root}): it was uploaded "
        "to another coordinator of this database, or the data directory was restored without "
        "its blobs. The tasks that did not run cost nothing; submit the job again"
    )
    failed: list[str] = []
    for active in list(app.scheduler.jobs.values()):
        missing = lacking(active.job.inputs, here)
        if missing:
            with app.store.transaction():  # the job, its tasks and its refund: all or nothing
                fail_job(app.scheduler, active, missing, why)
            failed.append(active.job.id)
    if failed:
        log.error(
            "failed %d unfinished job(s) whose inputs are not in %s (%d blob(s), e.g. %s): "
            "were they uploaded to another coordinator of this database? Give every "
            "coordinator the same --blobs s3://BUCKET/PREFIX; jobs: %s",
            len(failed),
            app.blobs.root,
            sum(1 for ok in present.values() if not ok),
            min(d for d, ok in present.items() if not ok),
            ", ".join(failed[:10]) + (" ..." if len(failed) > 10 else ""),
        )
    return len(failed)


async def serve(serving: ServeConfig, args: argparse.Namespace) -> None:
    keep_freed_memory()  # the coordinator process is ours to tune; see blobs.py
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    tls = Tls(serving.tls_cert, serving.tls_key) if serving.tls_cert and serving.tls_key else None
    if tls is not None:
        check_tls(tls)  # before standing by: a takeover must not find the pair wanting
    standby = operations.Standby(args)  # its /metrics and /ready, while it stands by
    try:
        taken = await take_over(serving, stop, standby.start)
    finally:
        await standby.stop()  # the port is free for the serving endpoint
    if taken is None:
        return
    # addresses an earlier run left are not where this one serves (metrics and dashboard
    # may be off now); removed only once this one holds the database, not while a second
    # process refused on the same data directory (or standing by) runs
    address_file = serving.settings.data_dir / "coordinator.addr"
    for name in ("coordinator.addr", "metrics.addr", "web.addr"):
        (serving.settings.data_dir / name).unlink(missing_ok=True)
    app, key_file = taken.app, taken.key_file
    app.on_taken_over = stop.set
    data_dir = serving.settings.data_dir
    try:
        server, port = await build_server(app, serving.listen, tls)
        http = await operations.start(app, args, data_dir, standby.port)
    except OSError:
        await app.stop()  # its background work too; closes the store
        raise
    # What start-up made (modules, the loaded queues) lives for good: frozen, it stays out
    # of the collector's full passes, which otherwise walk all of it and hold the event
    # loop for tens of milliseconds each (bench/submit_stall.py).
    gc.collect()
    gc.freeze()
    await server.start()
    host = serving.listen.rpartition(":")[0].strip("[]") or "127.0.0.1"
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    _record_for_this_user(app.signer, taken.admin_key, host, port)
    _write_whole(address_file, address + "\n")
    log.info(
        "sparegrid %s coordinator serving on %s (%s); admin key: %s",
        sparegrid_version(),
        address,
        "TLS" if tls else "plaintext",
        key_file if key_file.exists() else f"none ({key_file} is missing)",
    )
    await stop.wait()
    log.info("shutting down")
    address_file.unlink(missing_ok=True)  # nothing serves there now
    await operations.stop(http)
    await server.stop(grace=2)
    await app.stop()
    if app.taken_over is not None:
        raise app.taken_over  # exits 1: a supervisor restarts it, to stand by


def serve_command(args: argparse.Namespace) -> int:
    serving = serve_config(args)
    operations.apply(args, serving.settings)
    serving.settings.webhooks = WebhookConfig(allow_private=args.webhook_allow_private)
    logging.basicConfig(
        level=serving.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    operations.log_events()
    try:
        asyncio.run(serve(serving, args))
    except (OSError, StoreError) as exc:  # a damaged database says which file, and why
        log.error("%s", exc)
        return 1
    return 0
