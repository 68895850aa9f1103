"""Webhooks: a job may name a URL the coordinator calls once it ends.

When a job succeeds, fails or is cancelled, a delivery is recorded in the same transaction
that ends it, so a stop loses none; a background loop (App) posts it, and on failure tries
again with a doubling delay, up to `max_attempts` times.

Each call is a POST of a JSON body signed as sparegrid.wire.webhook says, where the secret is the account's webhook secret (`sparegrid account --webhook-secret`):
derived by the coordinator from its own key and the account id, never the API key, so a
receiver that verifies calls holds nothing that could submit jobs.

SSRF: a URL must be http or https; its host, once resolved, must not be a loopback,
private, link-local or otherwise reserved address, nor an IPv6 address with such an IPv4
address inside (NAT64, 6to4, IPv4-compatible), unless the operator allows them
(`--webhook-allow-private`). The call connects to the very address that was checked, so a
name that resolves differently the second time (DNS rebinding) cannot slip through.

A receiver cannot hold the coordinator: a call ends `timeout` seconds after it began, its
socket cut, whatever the receiver sends (http.client's own timeout bounds each read, and a
receiver trickling a byte every few seconds kept a call open for good), and calls run on
threads of their own (`CALL_THREADS`), never on those that uploads and pages wait for.

The job's owner sees its call (`latest`, shown by GetJob): state, attempts, when the next
one is, and why the last one failed, as `public_error` cleans it.
"""

import contextlib
import hashlib
import http.client
import ipaddress
import json
import re
import socket
import ssl
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from sparegrid.coordinator.clock import Clock
from sparegrid.coordinator.domain import Delivery, Job, printable
from sparegrid.coordinator.errors import invalid
from sparegrid.coordinator.store.base import Store
from sparegrid.wire import Signer
from sparegrid.wire.codes import WebhookState
from sparegrid.wire.webhook import DELIVERY_HEADER, SIGNATURE_HEADER, signature

SECRET_TAG = b"sparegrid/webhook-secret/v1\x00"
MAX_URL = 2000
RECHECK = 60.0  # seconds between looks for calls other coordinators left owed
CALL_THREADS = 16  # calls made at once (App's pool), and the most taken up in one round
MAX_ERROR = 300  # characters of a call's error its job's owner sees

# what an exception's text may say of the coordinator's machine: OpenSSL's source line
# ("(_ssl.c:1006)") and file paths (a CA bundle's, a module's)
_SOURCE_LINE = re.compile(r"\s*\(_?[\w.]+\.c:\d+\)")
_FILE_PATH = re.compile(r"(?<![\w/.:])/(?:[\w.@+-]+/)+[\w.@+-]*")


@dataclass
class WebhookConfig:
    allow_private: bool = False  # let URLs reach loopback/private addresses (tests, LANs)
    max_attempts: int = 10
    first_delay: float = 1.0  # seconds before the 2nd try; doubles, up to max_delay
    max_delay: float = 3600.0
    timeout: float = 10.0  # per call
    interval: float = 0.5  # how often the loop looks for due deliveries


def account_secret(signer: Signer, account_id: str) -> bytes:
    """The key an account's webhook calls are signed with: only the coordinator's key
    makes it (Ed25519 signatures are deterministic), and the tag keeps it apart from
    every other signature the coordinator makes."""
    return hashlib.sha256(signer.sign(SECRET_TAG, account_id.encode())).digest()


# IPv6 prefixes whose last 32 bits are an IPv4 address that a translator or tunnel may
# reach: NAT64's well-known prefix, IPv4-compatible (::a.b.c.d) and SIIT (::ffff:0:a.b.c.d).
# Python counts these as global whatever the IPv4 address in them.
_EMBEDS_IPV4 = tuple(ipaddress.IPv6Network(n) for n in ("64:ff9b::/96", "::/96", "::ffff:0:0:0/96"))


def _blocked(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.is_site_local:  # fec0::/10, deprecated but routed on some networks
            return True
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and any(ip in net for net in _EMBEDS_IPV4):
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        ip = embedded or ip
    return not ip.is_global or ip.is_multicast


def check_url(url: str, allow_private: bool) -> None:
    """Refuses, at submit, a URL that could never be called: not http(s), no host, too
    long, credentials in it, or a literal private address (names are resolved and checked
    again at each call)."""
    if len(url) > MAX_URL:
        raise invalid("BAD_WEBHOOK", f"webhook URL is longer than {MAX_URL} characters")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise invalid("BAD_WEBHOOK", f"webhook URL {url!r} must be http:// or https:// with a host")
    if parts.username or parts.password:
        raise invalid("BAD_WEBHOOK", "webhook URL must not carry a user name or password")
    try:
        parts.port  # noqa: B018 -- raises on a bad port
    except ValueError:
        raise invalid("BAD_WEBHOOK", f"webhook URL {url!r} has a bad port") from None
    host = parts.hostname
    if allow_private:
        return
    literal = host == "localhost" or host.endswith(".localhost")
    with contextlib.suppress(ValueError):  # a name: checked once resolved, at each call
        literal = literal or _blocked(host)
    if literal:
        raise invalid(
            "BAD_WEBHOOK",
            f"webhook URL {url!r} points to a private or loopback address; the operator "
            "allows those with `sparegrid coordinator serve --webhook-allow-private`",
        )


def public_error(error: str) -> str:
    """Why a call failed, as the job's owner may read it. The error is made here from the
    call to the owner's own URL (a status, an exception naming the receiver's status line
    or the connection's fate), never from the request, so it holds neither the signature
    nor the secret; what an exception may say of this machine (file paths, OpenSSL's
    source lines) is cut out, characters that could drive a terminal are replaced (the
    receiver chooses its status line), and it is kept to MAX_ERROR characters."""
    text = _FILE_PATH.sub("<path>", _SOURCE_LINE.sub("", error))
    text = printable(text)
    return text if len(text) <= MAX_ERROR else text[: MAX_ERROR - 1] + "\u2026"


def event_body(job: Job, delivery_id: str) -> bytes:
    body: dict[str, Any] = {
        "event": f"job.{job.state.value}",
        "delivery": delivery_id,
        "job": {
            "id": job.id,
            "kind": job.kind,
            "name": job.name,
            "state": job.state.value,
            "tasks": job.task_count,
            "succeeded": job.tasks_succeeded,
            "failed": job.tasks_failed,
            "cost_spent": job.cost_spent,
            "error": job.error,
            "created_at": job.created_at,
            "finished_at": job.finished_at,
        },
    }
    return json.dumps(body, separators=(",", ":"), sort_keys=True).encode()


class Webhooks:
    """Records deliveries when jobs end and decides when each is tried again."""

    def __init__(self, store: Store, clock: Clock, config: WebhookConfig) -> None:
        self._store = store
        self._clock = clock
        self.config = config
        # when the next call owed is due, as far as this coordinator knows (None: ask the
        # store), so an idle coordinator does not read the store twice a second
        self._next: float | None = None
        self._asked = 0.0  # when the store was last asked (another coordinator's calls)

    def wanted(self) -> bool:
        """Whether a call may be due now: one this coordinator knows of, or, once a minute,
        one that another coordinator sharing the database left."""
        now = self._clock.now()
        return self._next is None or now >= self._next or now - self._asked >= RECHECK

    def job_ended(self, job: Job) -> None:
        """Called in the transaction that ends the job."""
        if not job.webhook_url:
            return
        delivery_id = uuid.uuid4().hex
        now = self._clock.now()
        self._store.add_webhook(
            Delivery(
                id=delivery_id,
                job_id=job.id,
                account_id=job.account_id,
                url=job.webhook_url,
                body=event_body(job, delivery_id),
                next_at=now,
                created_at=now,
            )
        )
        self._next = now if self._next is None else min(self._next, now)

    def due(self, limit: int = 50) -> list[Delivery]:
        """The calls due now; notes when the next one is, when none is."""
        now = self._clock.now()
        self._asked = now
        found = self._store.due_webhooks(now, limit)
        if not found:
            pending = self._store.due_webhooks(float("inf"), 1)
            self._next = pending[0].next_at if pending else float("inf")
        return found

    def outcome(self, delivery: Delivery, error: str) -> None:
        """Records a call: delivered when `error` is empty, else tried again later, or
        given up after the last attempt."""
        delivery.attempts += 1
        delivery.last_error = public_error(error)
        delivery.tried_at = self._clock.now()
        if not error:
            delivery.state = WebhookState.DELIVERED
        elif delivery.attempts >= self.config.max_attempts:
            delivery.state = WebhookState.FAILED
        else:
            delay = self.config.first_delay * 2 ** (delivery.attempts - 1)
            delivery.next_at = self._clock.now() + min(delay, self.config.max_delay)
            self._next = min(self._next or delivery.next_at, delivery.next_at)
        self._store.update_webhook(delivery)

    def latest(self, job: Job) -> Delivery | None:
        """The job's last webhook call owed, for its owner (the caller checked that) to
        see; None when the job has no webhook or has not ended. A job retried and ended
        again owes a call each time: the last tells how the job stands now."""
        if not job.webhook_url:
            return None
        found = self._store.get_webhooks(job.id)
        if not found:
            return None
        last = max(found, key=lambda d: d.created_at)
        last.last_error = public_error(last.last_error)  # recorded before it was cleaned
        return last


class _Deadline:
    """Cuts a call's socket once `seconds` have passed since the call began."""

    def __init__(self, seconds: float) -> None:
        self.expired = False
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> "_Deadline":
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._sock = sock
            if self.expired:
                self._cut()

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            self._cut()

    def _cut(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)  # a blocked read returns at once


class _Pinned(http.client.HTTPConnection):
    """HTTP to an address already checked; its socket watched by the call's deadline."""

    def __init__(
        self, host: str, address: str, port: int, timeout: float, deadline: _Deadline
    ) -> None:
        super().__init__(host, port, timeout=timeout)
        self._address = address
        self._deadline = deadline

    def _open(self) -> socket.socket:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self._deadline.watch(sock)
        return sock

    def connect(self) -> None:
        self.sock = self._open()


class _PinnedHTTPS(_Pinned):
    """HTTPS to an address already checked, with the URL's host name for SNI and the
    certificate check."""

    def connect(self) -> None:
        context = ssl.create_default_context()
        self.sock = context.wrap_socket(self._open(), server_hostname=self.host)


def post(delivery: Delivery, secret: bytes, config: WebhookConfig) -> str:
    """Calls the URL once (blocking: run it on a thread), for at most `config.timeout`
    seconds; "" on a 2xx answer, else why not."""
    parts = urlsplit(delivery.url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        return f"cannot resolve {host}: {exc}"
    addresses = [str(info[4][0]) for info in infos]
    if not config.allow_private and any(_blocked(a) for a in addresses):
        return f"{host} resolves to a private or loopback address; refused"
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    headers = {
        "Host": parts.netloc,
        "Content-Type": "application/json",
        "User-Agent": "sparegrid-webhook/1",
        DELIVERY_HEADER: delivery.id,
        SIGNATURE_HEADER: signature(secret, int(time.time()), delivery.body),
    }
    kind = _PinnedHTTPS if parts.scheme == "https" else _Pinned
    with _Deadline(config.timeout) as deadline:
        conn = kind(host, addresses[0], port, config.timeout, deadline)
        try:
            conn.request("POST", path, body=delivery.body, headers=headers)
            status = conn.getresponse().status
        except (OSError, http.client.HTTPException) as exc:
            error = f"{type(exc).__name__}: {exc}"
        else:
            error = "" if 200 <= status < 300 else f"HTTP {status}"
        finally:
            conn.close()
    # a cut call may still parse as an answer (its headers end where the socket did)
    return f"no whole answer within {config.timeout:g} s" if deadline.expired else error
