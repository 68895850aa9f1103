"""A job's owner sees its webhook's call, through the SDK and `sparegrid job get`, from a
real coordinator: pending with the last error and the next attempt while the receiver
fails, then delivered with the attempts it took, or given up; another account cannot get
the job at all; a job without a webhook shows none. What the owner reads of an error is
capped and holds nothing of the coordinator's machine."""

import asyncio
import json
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from sparegrid.coordinator.services.webhooks import MAX_ERROR, public_error
from sparegrid.sdk import AsyncClient, AsyncJob, NotFoundError, WebhookState
from tests.coordinator.conftest import Cli, Served


@dataclass
class Receiver:
    """Answers `failures` calls with 503 (or `status_line`, when set), then 204."""

    url: str = ""
    failures: int = 0
    status_line: bytes = b""
    calls: list[int] = field(default_factory=list)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            failing = len(state.calls) < state.failures
            state.calls.append(503 if failing else 204)
            if failing and state.status_line:
                self.wfile.write(state.status_line + b"\r\n\r\n")
                return
            self.send_response(503 if failing else 204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    yield state
    server.shutdown()
    server.server_close()


def allow_loopback(served: Served, first_delay: float = 2.0, max_attempts: int = 10) -> None:
    config = served.app.settings.webhooks
    config.allow_private, config.first_delay, config.interval = True, first_delay, 0.05
    config.max_attempts = max_attempts


async def ended_job(client: AsyncClient, webhook_url: str = "") -> AsyncJob:
    """A job that ends at once (cancelled: no worker needed), its webhook then owed."""
    job = await client.submit("echo", {"tasks": 1, "sleep_ms": 60000}, webhook_url=webhook_url)
    return await job.cancel()


async def until(job: AsyncJob, done, what: str) -> AsyncJob:  # type: ignore[no-untyped-def]
    for _ in range(200):
        await job.refresh()
        if job.webhook is not None and done(job.webhook):
            return job
        await asyncio.sleep(0.05)
    raise AssertionError(f"{what}: {job.webhook}")


async def test_the_owner_sees_the_call_pending_then_delivered(
    served: Served, receiver: Receiver, cli: Cli
) -> None:
    allow_loopback(served)
    receiver.failures = 1
    async with AsyncClient(served.address, api_key=served.alice_key) as alice:
        job = await ended_job(alice, receiver.url)
        assert job.webhook is None or job.webhook.attempts == 0  # owed, not called yet

        await until(job, lambda w: w.attempts >= 1, "the first call")
        call = job.webhook
        assert call is not None and call.state is WebhookState.PENDING
        assert (call.attempts, call.max_attempts, call.last_error) == (1, 10, "HTTP 503")
        assert call.last_attempt_at is not None and call.next_attempt_at is not None
        assert 1.5 < (call.next_attempt_at - call.last_attempt_at).total_seconds() < 2.5
        shown = await cli("job", "get", job.id, key=served.alice_key)
        assert shown.code == 0
        assert "pending, attempt 2 of 10 at " in shown.out and "(last: HTTP 503)" in shown.out

        await until(job, lambda w: w.state is not WebhookState.PENDING, "the second call")
        call = job.webhook
        assert call is not None and call.state is WebhookState.DELIVERED
        assert (call.attempts, call.last_error, call.next_attempt_at) == (2, "", None)
        assert receiver.calls == [503, 204]
        shown = await cli("job", "get", job.id, key=served.alice_key)
        assert "delivered after 2 attempts (" in shown.out
        as_json = await cli("job", "get", job.id, "--json", key=served.alice_key)
        webhook = json.loads(as_json.out)["job"]["webhook"]
        assert (webhook["state"], webhook["attempts"], webhook["last_error"]) == (
            "delivered",
            2,
            "",
        )
        assert webhook["delivery_id"] == call.delivery_id and webhook["last_attempt_at"]

    async with AsyncClient(served.address, api_key=served.bob_key) as bob:
        with pytest.raises(NotFoundError):
            await bob.get_job(job.id)  # another account cannot get the job, nor its call
    refused = await cli("job", "get", job.id, key=served.bob_key)
    assert refused.code != 0 and "no job" in refused.err and "webhook" not in refused.out


async def test_a_call_given_up_says_so_with_the_last_error(
    served: Served, receiver: Receiver, cli: Cli
) -> None:
    allow_loopback(served, first_delay=0.05, max_attempts=2)
    receiver.failures = 99
    async with AsyncClient(served.address, api_key=served.alice_key) as alice:
        job = await until(
            await ended_job(alice, receiver.url),
            lambda w: w.state is not WebhookState.PENDING,
            "giving up",
        )
    call = job.webhook
    assert call is not None and call.state is WebhookState.FAILED
    assert (call.attempts, call.last_error, call.next_attempt_at) == (2, "HTTP 503", None)
    shown = await cli("job", "get", job.id, key=served.alice_key)
    assert "failed after 2 attempts: HTTP 503" in shown.out
    await asyncio.sleep(0.3)
    assert receiver.calls == [503, 503]  # given up: not called again


async def test_a_job_without_a_webhook_shows_none(served: Served, cli: Cli) -> None:
    async with AsyncClient(served.address, api_key=served.alice_key) as alice:
        job = await ended_job(alice)
        await job.refresh()
    assert job.webhook is None and not job.snapshot.has_webhook
    shown = await cli("job", "get", job.id, key=served.alice_key)
    assert shown.code == 0 and "webhook" not in shown.out
    as_json = await cli("job", "get", job.id, "--json", key=served.alice_key)
    assert json.loads(as_json.out)["job"]["webhook"] is None


async def test_a_receivers_long_answer_is_cut_short(
    served: Served, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    """The owner reads it capped, and so does the operator: a client's receiver answering
    every call with 5,000 characters and a terminal escape fills no log."""
    allow_loopback(served)
    receiver.failures, receiver.status_line = 1, b"HTTP/1.1 5030 \x1b[2J" + b"x" * 5000
    with caplog.at_level(logging.WARNING, logger="sparegrid.coordinator"):
        async with AsyncClient(served.address, api_key=served.alice_key) as alice:
            job = await until(
                await ended_job(alice, receiver.url), lambda w: w.attempts >= 1, "the call"
            )
    assert job.webhook is not None
    error = job.webhook.last_error
    assert error.startswith("BadStatusLine: ") and len(error) == MAX_ERROR
    logged = [r.getMessage() for r in caplog.records if "webhook for job" in r.getMessage()]
    assert logged and all(len(m) < MAX_ERROR + 100 and "\x1b" not in m for m in logged), logged


async def test_an_https_call_to_a_plain_receiver_names_no_source_file(
    served: Served, receiver: Receiver
) -> None:
    allow_loopback(served)
    async with AsyncClient(served.address, api_key=served.alice_key) as alice:
        https = receiver.url.replace("http://", "https://")
        job = await until(await ended_job(alice, https), lambda w: w.attempts >= 1, "the call")
    assert job.webhook is not None
    error = job.webhook.last_error
    assert error.startswith("SSLError: ") and ".c:" not in error, error


def test_what_the_owner_reads_holds_no_path_nor_control_characters() -> None:
    raw = (
        "FileNotFoundError: [Errno 2] No such file or directory: "
        "'/opt/sparegrid/certs/ca.pem' \x1b[2J (_ssl.c:1006)"
    )
    assert public_error(raw) == (
        "FileNotFoundError: [Errno 2] No such file or directory: '<path>' ?[2J"
    )
    assert public_error("HTTP 503") == "HTTP 503"
    assert public_error("cannot resolve hooks.example.com: x") == (
        "cannot resolve hooks.example.com: x"
    )
    long = public_error("e" * 10_000)
    assert len(long) == MAX_ERROR and public_error(long) == long
