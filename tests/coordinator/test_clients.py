"""Clients' controls on the in-memory store with a fake clock: priority within an account,
a cap on an account's running tasks, estimates, and webhook deliveries."""

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from sparegrid.coordinator.domain import Delivery, JobState
from sparegrid.coordinator.errors import CoordinatorError
from sparegrid.coordinator.services.estimate import estimate
from sparegrid.coordinator.services.jobs import JobSpec
from sparegrid.coordinator.services.prices import Price
from sparegrid.coordinator.services.webhooks import (
    WebhookConfig,
    account_secret,
    check_url,
    post,
)
from sparegrid.wire import Signer
from sparegrid.wire.webhook import verify
from tests.coordinator.helpers import FakeNode, echo, make_app, make_client
from tests.coordinator.verifying import upload


def spec(tasks: int, **extra: object) -> JobSpec:
    params = json.dumps({"tasks": tasks, "data": "hi"}).encode()
    return JobSpec(kind="echo", params=params, **extra)  # type: ignore[arg-type]


def jobs_of(items) -> list[str]:
    return [task.job_id for _, task, _ in items]


def test_priority_orders_an_accounts_own_jobs_not_other_accounts(tmp_path) -> None:
    app = make_app(tmp_path)
    alice, bob = make_client(app, "alice"), make_client(app, "bob")
    first = app.jobs.submit(alice, spec(2)).id
    bobs = app.jobs.submit(bob, spec(2)).id
    urgent = app.jobs.submit(alice, spec(2, priority=50)).id
    node = FakeNode(app, "n1")
    node.connect(credit=4)  # a new node's window: 4 tasks
    # alice's urgent job takes the place her first job held; bob keeps his turn
    items = node.sink.take()
    assert jobs_of(items) == [urgent, urgent, bobs, bobs]
    node.answer(items)
    app.scheduler.grant(node.id, 0, 4)
    app.scheduler.dispatch()
    assert jobs_of(node.sink.take()) == [first, first]
    assert app.store.get_job(urgent).priority == 50


def test_bad_priority_is_refused_and_changes_nothing(tmp_path) -> None:
    app = make_app(tmp_path)
    alice = make_client(app, credit=100)
    with pytest.raises(CoordinatorError) as caught:
        app.jobs.submit(alice, spec(1, priority=101))
    assert caught.value.code == "BAD_PRIORITY"
    assert "-100 to 100" in caught.value.message
    assert app.store.list_jobs(alice.id) == []
    assert app.accounts.balance(alice) == 100


def test_running_cap_per_account_leaves_room_for_others(tmp_path) -> None:
    app = make_app(tmp_path, max_running_per_account=2)
    alice, bob = make_client(app, "alice"), make_client(app, "bob")
    big = app.jobs.submit(alice, spec(5)).id
    other = app.jobs.submit(alice, spec(3)).id
    bobs = app.jobs.submit(bob, spec(1)).id
    node = FakeNode(app, "n1")
    node.connect(credit=10)
    items = node.sink.take()
    assert sorted(jobs_of(items)) == sorted([big, big, bobs])  # alice: 2 of her 8 at once
    assert "cap per account" in app.jobs.waiting(other)
    assert app.jobs.waiting(bobs) == ""
    # a result frees a place: the next of alice's tasks goes out, never more than 2
    node.answer(items[:1])
    app.scheduler.dispatch()
    assert len(node.sink.take()) == 1
    running = sum(len(a.running) for a in app.scheduler.jobs.values() if a.owner == "alice")
    assert running == 2


def test_estimate_matches_submit_and_stores_nothing(tmp_path) -> None:
    app = make_app(tmp_path, prices={"echo": Price(1, 10)})
    alice = make_client(app, credit=100)
    draft = app.jobs.prepare(alice, spec(5))
    found = estimate(app.jobs.plan(draft))
    assert (found.tasks, found.work_units, found.exact_credit) == (5, 5, 0.5)
    assert found.credit_per_pass == 5  # each result rounds up to 1
    assert found.max_paid_results == 3 and found.max_held == 15
    assert "worth 0.5 credit a pass, charged 5" in found.rounding
    assert "5 of its 5 task(s) are worth less than 1 each" in found.rounding
    assert app.store.list_jobs(alice.id) == []
    assert app.accounts.balance(alice) == 100
    job = app.jobs.submit(alice, spec(5))
    assert job.cost_held == found.max_held
    FakeNode(app, "n1"), FakeNode(app, "n2")  # two vetted owners: a 2-of-2 quorum may form
    quorum = estimate(app.jobs.plan(app.jobs.prepare(alice, spec(10, replicas=2, quorum=2))))
    assert (quorum.policy, quorum.max_paid_results, quorum.max_held) == ("2 of 2", 2, 20)


def test_an_estimate_cannot_read_or_probe_another_accounts_blob(tmp_path) -> None:
    """A rogue client naming bob's input digest learns no more than from a made-up one."""
    app = make_app(tmp_path)
    alice, bob = make_client(app, "alice"), make_client(app, "bob")
    theirs = upload(app, bob.id, b"bob's private input")
    made_up = "ab" * 32
    said = []
    for digest in (theirs, made_up):
        params = json.dumps({"tasks": 1}).encode()
        with pytest.raises(CoordinatorError) as caught:
            app.jobs.prepare(
                alice, JobSpec(kind="checksum", params=params, inputs={"data": digest})
            )
        assert caught.value.code == "BLOB_NOT_FOUND"
        said.append(caught.value.message.replace(digest, "DIGEST"))
    assert said[0] == said[1]  # the same words: no oracle for what bob stored
    assert app.store.list_jobs(alice.id) == []


# --- webhooks ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("ftp://example.com/x", "must be http:// or https://"),
        ("https:///nohost", "must be http:// or https://"),
        ("https://user:pw@example.com/", "user name or password"),
        ("http://127.0.0.1:8080/hook", "private or loopback"),
        ("http://10.1.2.3/hook", "private or loopback"),
        ("http://[::1]/hook", "private or loopback"),
        ("http://169.254.169.254/latest/meta-data", "private or loopback"),
        # IPv6 addresses with a private IPv4 address inside: NAT64, 6to4, IPv4-compatible,
        # SIIT; and site-local
        ("http://[64:ff9b::a9fe:a9fe]/latest/meta-data", "private or loopback"),
        ("http://[64:ff9b::10.0.0.1]/hook", "private or loopback"),
        ("http://[2002:7f00:1::1]/hook", "private or loopback"),
        ("http://[::127.0.0.1]/hook", "private or loopback"),
        ("http://[::ffff:0:192.168.1.1]/hook", "private or loopback"),
        ("http://[fec0::1]/hook", "private or loopback"),
        ("http://localhost/hook", "private or loopback"),
        ("https://example.com:99999/", "bad port"),
        ("https://example.com/" + "a" * 2000, "longer than"),
    ],
)
def test_bad_webhook_url_is_refused_at_submit(tmp_path, url: str, why: str) -> None:
    app = make_app(tmp_path)
    alice = make_client(app, credit=100)
    with pytest.raises(CoordinatorError) as caught:
        app.jobs.submit(alice, spec(1, webhook_url=url))
    assert caught.value.code == "BAD_WEBHOOK"
    assert why in caught.value.message
    assert app.store.list_jobs(alice.id) == []
    assert app.accounts.balance(alice) == 100


def test_private_webhook_allowed_only_by_the_operator() -> None:
    check_url("http://127.0.0.1:8080/hook", allow_private=True)
    check_url("https://hooks.example.com/sparegrid", allow_private=False)
    check_url("https://[64:ff9b::8.8.8.8]/", allow_private=False)  # NAT64 to a public one
    with pytest.raises(CoordinatorError, match="--webhook-allow-private"):
        check_url("http://192.168.1.5/", allow_private=False)


def test_job_end_records_a_delivery_in_its_transaction(tmp_path) -> None:
    app = make_app(tmp_path)
    alice = make_client(app)
    job_id = app.jobs.submit(alice, spec(2, webhook_url="https://hooks.example.com/x")).id
    silent = echo(app, alice, 1)
    node = FakeNode(app, "n1")
    node.connect(credit=10)
    node.answer(node.sink.take())
    assert app.store.get_job(job_id).state == JobState.SUCCEEDED
    [delivery] = app.webhooks.due()
    assert delivery.job_id == job_id and delivery.account_id == alice.id
    body = json.loads(delivery.body)
    assert body["event"] == "job.succeeded"
    assert body["job"]["id"] == job_id and body["job"]["succeeded"] == 2
    assert app.store.get_webhooks(silent) == []


def test_failed_calls_back_off_then_give_up(tmp_path) -> None:
    app = make_app(tmp_path, webhooks=WebhookConfig(max_attempts=3, first_delay=2.0))
    alice = make_client(app)
    job_id = app.jobs.submit(alice, spec(1, webhook_url="https://hooks.example.com/x")).id
    app.jobs.cancel(alice, job_id)
    [delivery] = app.webhooks.due()
    assert json.loads(delivery.body)["event"] == "job.cancelled"
    app.webhooks.outcome(delivery, "HTTP 500")
    assert app.webhooks.due() == []  # not before 2 s
    app.clock.advance(2.0)
    [again] = app.webhooks.due()
    assert again.attempts == 1 and again.last_error == "HTTP 500"
    app.webhooks.outcome(again, "HTTP 502")
    app.clock.advance(3.9)
    assert app.webhooks.due() == []  # the delay doubled: 4 s
    app.clock.advance(0.1)
    [third] = app.webhooks.due()
    app.webhooks.outcome(third, "timed out")
    app.clock.advance(3600)
    assert app.webhooks.due() == []
    [given_up] = app.store.get_webhooks(job_id)
    assert (given_up.state, given_up.attempts) == ("failed", 3)


def test_account_secret_is_per_account_and_not_the_api_key(tmp_path) -> None:
    signer, other = Signer.generate(), Signer.generate()
    a = account_secret(signer, "account-a")
    assert a == account_secret(signer, "account-a")  # stable across restarts
    assert a != account_secret(signer, "account-b")
    assert a != account_secret(other, "account-a")  # only this coordinator's key makes it
    assert len(a) == 32


class _Recorder(BaseHTTPRequestHandler):
    calls: list[tuple[dict[str, str], bytes]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.calls.append((dict(self.headers), body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def receiver():
    _Recorder.calls = []
    server = HTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], _Recorder.calls
    server.shutdown()
    server.server_close()


def _delivery(url: str) -> Delivery:
    return Delivery("d1", "job1", "acct", url, b'{"event":"job.succeeded"}')


def test_post_signs_the_body(receiver) -> None:
    port, calls = receiver
    secret = b"s" * 32
    config = WebhookConfig(allow_private=True)
    assert post(_delivery(f"http://127.0.0.1:{port}/hook?x=1"), secret, config) == ""
    [(headers, body)] = calls
    assert body == b'{"event":"job.succeeded"}'
    assert headers["X-Sparegrid-Delivery"] == "d1"
    assert verify(secret, headers["X-Sparegrid-Signature"], body)
    assert not verify(b"x" * 32, headers["X-Sparegrid-Signature"], body)
    assert not verify(secret, headers["X-Sparegrid-Signature"], body + b" ")


def test_post_refuses_a_name_that_resolves_to_loopback(receiver, monkeypatch) -> None:
    """A public-looking name whose DNS answer is a loopback address (a hostile resolver,
    or DNS rebinding after the submit): refused when resolved, before any connection."""
    port, calls = receiver
    real = socket.getaddrinfo

    def hostile(host, *args, **kwargs):
        return real("127.0.0.1" if host == "hooks.example.com" else host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", hostile)
    url = f"http://hooks.example.com:{port}/hook"
    check_url(url, allow_private=False)  # a name passes at submit...
    error = post(_delivery(url), b"s" * 32, WebhookConfig())  # ...and is checked resolved
    assert error == "hooks.example.com resolves to a private or loopback address; refused"
    assert calls == []
    # the operator's flag lets it through, to the address that was checked
    assert post(_delivery(url), b"s" * 32, WebhookConfig(allow_private=True)) == ""
    assert len(calls) == 1


def test_an_idle_coordinator_does_not_read_the_store_for_webhooks(tmp_path) -> None:
    app = make_app(tmp_path)
    alice = make_client(app)
    assert app.webhooks.wanted()  # nothing known yet: ask the store once
    assert app.webhooks.due() == []
    assert not app.webhooks.wanted()
    app.clock.advance(59)
    assert not app.webhooks.wanted()
    app.clock.advance(1)
    assert app.webhooks.wanted()  # once a minute: another coordinator's calls
    app.webhooks.due()
    job_id = app.jobs.submit(alice, spec(1, webhook_url="https://hooks.example.com/x")).id
    app.jobs.cancel(alice, job_id)
    assert app.webhooks.wanted()  # a job ended with a webhook: due now
    [delivery] = app.webhooks.due()
    app.webhooks.outcome(delivery, "HTTP 503")
    assert app.webhooks.due() == [] and not app.webhooks.wanted()
    app.clock.advance(1.0)
    assert app.webhooks.wanted() and len(app.webhooks.due()) == 1  # its retry


def test_a_job_the_account_cannot_pay_for_says_what_it_costs(tmp_path: Path) -> None:
    """A newcomer's first submit on an account with no credit said '(1 tasks, ...)'."""
    app = make_app(tmp_path)
    bob = make_client(app, "bob", credit=0)
    with pytest.raises(CoordinatorError) as err:
        echo(app, bob, 1)
    assert err.value.code == "INSUFFICIENT_CREDIT"
    assert err.value.message.startswith("job costs up to 3 credit (1 task, up to 3 paid ")
    assert "account 'bob' holds 0" in err.value.message
