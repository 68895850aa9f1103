"""The worker's /metrics over HTTP: a small threaded server of its own (not
prometheus_client's, which answers any Host), serving the registry only to a Host header no
other site can rebind (`sparegrid.wire.hosts`): a web page in the volunteer's browser whose
name is pointed at 127.0.0.1 must not read the node's devices, earnings and state."""

import socket
import threading
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from sparegrid.wire.hosts import host_allowed, host_name


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self, addr: str, port: int, registry: CollectorRegistry, names: frozenset[str]
    ) -> None:
        infos = socket.getaddrinfo(addr, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        self.address_family, *_, sockaddr = infos[0]
        self.registry, self.names = registry, names
        super().__init__((str(sockaddr[0]), int(sockaddr[1])), _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = 10  # seconds a client may take to send its request

    def do_GET(self) -> None:
        if urlsplit(self.path).path != "/metrics":
            self._answer(404, b"not found: the metrics are at /metrics\n", "text/plain")
            return
        header = self.headers.get("host")
        if not host_allowed(header, self.server.names):
            refusal = (
                f"refused: the Host header {header!r} is not this metrics endpoint's name. "
                "Scrape it by IP address or localhost, or let the worker answer to this "
                f"name with --metrics-host {host_name(header or '')}\n"
            )
            self._answer(403, refusal.encode(), "text/plain; charset=utf-8")
            return
        self._answer(200, generate_latest(self.server.registry), CONTENT_TYPE_LATEST)

    def _answer(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # a scrape every few seconds is not news


class MetricsServer:
    """Serves `registry` at http://ADDR:PORT/metrics from a thread until `close`. `hosts`:
    the names it answers to besides IP addresses and localhost (the listen address's name
    and --metrics-host). Raises OSError when it cannot listen."""

    def __init__(
        self, registry: CollectorRegistry, addr: str, port: int, hosts: Iterable[str] = ()
    ) -> None:
        names = frozenset(host_name(h) for h in [addr, *hosts])
        self._server = _Server(addr, port, registry, names)
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="metrics-http", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
