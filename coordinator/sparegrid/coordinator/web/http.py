"""An ASGI app served by uvicorn inside the coordinator's event loop, on a socket we bind
(so a taken port fails at start with a clear error, and port 0 picks a free one)."""

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable, Iterable, Iterator

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

from sparegrid.wire.hosts import host_allowed, host_name

log = logging.getLogger("sparegrid.coordinator.web")
MAX_CONNECTIONS = 64


class _Embedded(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # the coordinator handles SIGTERM and SIGINT itself


def split_address(listen: str, flag: str) -> tuple[str, int]:
    """(host, port) from HOST:PORT (or [v6]:PORT); SystemExit naming the flag if not."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise SystemExit(f"error: {flag} takes HOST:PORT (port 0 picks one), got {listen!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


class HttpServer:
    """One HTTP listener; `port` is the bound one once `start` returned."""

    def __init__(self, app: ASGIApp, host: str, port: int, what: str) -> None:
        self.what = what
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._sock.bind((host, port))
        except OSError as exc:
            self._sock.close()
            raise OSError(
                f"cannot serve the {what} on {host}:{port}: {exc.strerror or exc}; "
                "pick another port"
            ) from None
        self.host, self.port = host, self._sock.getsockname()[1]
        config = uvicorn.Config(
            app,
            log_level="warning",
            access_log=False,  # nothing of a request is logged
            lifespan="off",
            server_header=False,
            limit_concurrency=MAX_CONNECTIONS,  # past it: 503, not memory
        )
        self._server = _Embedded(config)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._server.serve(sockets=[self._sock]))
        while not self._server.started:
            if self._task.done():
                self._task.result()  # raises what stopped it
                raise OSError(f"the {self.what} server did not start")
            await asyncio.sleep(0.01)
        log.info("%s on http://%s", self.what, self.address)

    @property
    def address(self) -> str:
        """HOST:PORT as a URL or curl takes it ([::1]:PORT for an IPv6 host)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    async def stop(self) -> None:
        self._server.should_exit = True
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._sock.close()


def metrics_app(
    registry: CollectorRegistry,
    hosts: Iterable[str] = (),
    ready: Callable[[], tuple[bool, str]] | None = None,
) -> Starlette:
    """GET /metrics: the registry in Prometheus' text format, for a Host header that
    `host_allowed` accepts with `hosts` (the names given to --metrics-host and the
    listen address). With `ready`, GET /ready too: 200 when it says (True, why), 503 when
    (False, why), `why` the body (a load balancer or probe tells a standby from the
    coordinator that serves); the same Host rule, since the body names the database."""
    names = frozenset(host_name(h) for h in hosts)

    def refused(request: Request) -> Response | None:
        header = request.headers.get("host")
        if host_allowed(header, names):
            return None
        return PlainTextResponse(
            f"refused: the Host header {header!r} is not this metrics endpoint's name. "
            "Scrape it by IP address or localhost, or let the coordinator answer to "
            f"this name with --metrics-host {host_name(header or '')}",
            403,
        )

    async def metrics(request: Request) -> Response:
        return refused(request) or Response(
            generate_latest(registry), media_type=CONTENT_TYPE_LATEST
        )

    routes = [Route("/metrics", metrics)]
    if ready is not None:
        answer = ready

        async def readiness(request: Request) -> Response:
            if (no := refused(request)) is not None:
                return no
            ok, why = answer()
            return PlainTextResponse(why + "\n", 200 if ok else 503)

        routes.append(Route("/ready", readiness))
    return Starlette(routes=routes)
