"""`coordinator serve`'s flags for metrics, the dashboard and events, and starting them (and,
while it stands by, its /metrics and /ready)."""

import argparse
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from prometheus_client import CollectorRegistry

from sparegrid.coordinator.app import App
from sparegrid.coordinator.metrics import role_metrics
from sparegrid.coordinator.services.events import EventConfig
from sparegrid.coordinator.settings import Settings
from sparegrid.coordinator.web.http import HttpServer, metrics_app
from sparegrid.wire.hosts import to_host

EVENTS_LOGGER = "sparegrid.events"


def _port(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (0-65535; 0 picks one)")
    return int(text)


def _host(text: str) -> str:
    try:
        return to_host(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a host name (letters, digits, '-' and '.', e.g. metrics.example.org)"
        ) from exc


def add_flags(serve: argparse.ArgumentParser) -> None:
    env = os.environ.get
    ports = {name: env(f"SPAREGRID_{name.upper()}_PORT", "") for name in ("metrics", "web")}
    group = serve.add_argument_group("operations (metrics, dashboard, events)")
    for name, what, variable in [
        ("metrics", "Prometheus metrics at /metrics", "SPAREGRID_METRICS"),
        ("web", "the read-only dashboard (sign in with an account's API key)", "SPAREGRID_WEB"),
    ]:
        group.add_argument(
            f"--{name}-port",
            type=_port,
            default=_port(ports[name]) if ports[name] else None,
            metavar="PORT",
            help=f"serve {what} over HTTP on this port (0 picks one; written to "
            f"DATA_DIR/{name}.addr) [off]",
        )
        group.add_argument(
            f"--{name}-addr",
            default=env(f"{variable}_ADDR", "127.0.0.1"),
            metavar="HOST",
            help=f"address for --{name}-port [%(default)s]",
        )
    group.add_argument(
        "--metrics-host",
        dest="metrics_hosts",
        type=_host,
        action="append",
        default=[_host(h) for h in env("SPAREGRID_METRICS_HOSTS", "").split(",") if h.strip()],
        metavar="NAME",
        help="a DNS name Prometheus scrapes /metrics by (repeat for more; "
        "SPAREGRID_METRICS_HOSTS takes a comma list). IP addresses, localhost and "
        "--metrics-addr are always answered; other names are refused, so a web page "
        "that rebinds its own name to this address cannot read the metrics",
    )
    group.add_argument(
        "--event-retention",
        type=int,
        default=EventConfig.keep,
        metavar="N",
        help="events kept for `sparegrid admin events` and the dashboard; older ones are "
        "deleted [%(default)s]",
    )


def apply(args: argparse.Namespace, settings: Settings) -> None:
    """Checks the flags and puts what the app needs into its settings."""
    if args.event_retention < 1:
        raise SystemExit("error: --event-retention must be at least 1")
    settings.events = EventConfig(keep=args.event_retention)


def log_events(stream: object = None) -> None:
    """Events go out as bare JSON lines (one per event), whatever the log's format."""
    handler = logging.StreamHandler(stream or sys.stderr)  # type: ignore[arg-type]
    handler.setFormatter(logging.Formatter("%(message)s"))
    events = logging.getLogger(EVENTS_LOGGER)
    events.addHandler(handler)
    events.propagate = False


async def start(
    app: App, args: argparse.Namespace, data_dir: Path, metrics_port: int | None = None
) -> list[HttpServer]:
    """Starts the HTTP servers asked for; each one's address goes to DATA_DIR/NAME.addr.
    metrics_port: the one the standby endpoint had (--metrics-port 0 picked it), if any."""
    servers: list[HttpServer] = []
    if metrics_port is None:
        metrics_port = args.metrics_port
    try:
        if metrics_port is not None:
            servers.append(
                HttpServer(
                    metrics_app(
                        app.metrics.registry,
                        [args.metrics_addr, *args.metrics_hosts],
                        ready=readiness(app),
                    ),
                    args.metrics_addr,
                    metrics_port,
                    "metrics",
                )
            )
        if args.web_port is not None:
            from sparegrid.coordinator.web.dashboard import Dashboard

            servers.append(
                HttpServer(Dashboard(app).asgi, args.web_addr, args.web_port, "dashboard")
            )
        for server in servers:
            await server.start()
            name = "metrics" if server.what == "metrics" else "web"
            (data_dir / f"{name}.addr").write_text(f"{server.address}\n")
    except BaseException:
        await stop(servers)
        raise
    if metrics_port is not None:
        app.metrics.start()
    return servers


def readiness(app: App) -> Callable[[], tuple[bool, str]]:
    """What the serving coordinator's /ready answers: ready while it serves, 503 while its
    database is lost (as gRPC health says NOT_SERVING then), until it is back."""
    database = getattr(app.store, "database", "database")

    def ready() -> tuple[bool, str]:
        if app.serving:
            return True, f"serving from the {database}"
        return False, f"lost the {database}: calls are refused until it is back"

    return ready


class Standby:
    """While this coordinator stands by, what it serves on the --metrics address, if one is
    given: /metrics with `sparegrid_coordinator_serving 0` (and the role and process
    gauges), and /ready answering 503 with what it stands by for, so monitoring tells a
    standby from a dead process. It writes no address file: a standby may share the
    serving one's data directory, whose metrics.addr it would overwrite. `stop` frees the
    port before the serving endpoint binds it; `port` is the one to bind then (the one
    --metrics-port 0 picked here, so the address stays the same)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.port: int | None = args.metrics_port
        self._server: HttpServer | None = None

    async def start(self, why: str) -> None:
        """why: the database it stands by for (StoreTaken's message, with no password)."""
        args = self.args
        if args.metrics_port is None or self._server is not None:
            return
        registry = CollectorRegistry(auto_describe=True)
        role_metrics(registry, serving=False)
        body = f"standing by: {why}; this one serves when that one stops"
        server = HttpServer(
            metrics_app(registry, [args.metrics_addr, *args.metrics_hosts], lambda: (False, body)),
            args.metrics_addr,
            args.metrics_port,
            "standby metrics",
        )
        await server.start()
        self._server, self.port = server, server.port

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop()  # its socket closed: the port is free again
            self._server = None


async def stop(servers: list[HttpServer]) -> None:
    for server in servers:
        await server.stop()
