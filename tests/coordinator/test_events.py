"""Events: what the services record, what a failed transaction leaves (nothing), the JSON
log lines, AdminService.WatchEvents (admins only, following), and the metrics they feed."""

import asyncio
import json
import logging
from pathlib import Path

import grpc
import pytest
from prometheus_client import generate_latest

from sparegrid.coordinator.domain import Event
from sparegrid.coordinator.services.events import EventConfig, EventKind
from sparegrid.coordinator.services.reputation import TrustConfig
from sparegrid.v1 import admin_pb2, admin_pb2_grpc
from tests.coordinator.conftest import Served, code_of
from tests.coordinator.helpers import FakeNode, echo, make_app, make_client
from tests.coordinator.verifying import nodes, run, submit


def kinds(app) -> list[str]:  # type: ignore[no-untyped-def]
    return [e.kind for e in app.store.list_events(limit=1000)]


def sample(app, name: str, **labels: str) -> float:  # type: ignore[no-untyped-def]
    value = app.metrics.registry.get_sample_value(name, labels)
    return value or 0.0


def test_a_job_that_ends_without_agreement_leaves_its_story(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    fleet = nodes(app, *[f"o{i}" for i in range(5)])
    job_id = submit(app, 1, replicas=2, quorum=2)
    for i, node in enumerate(fleet):
        run(node, f"answer {i}".encode())
    published = app.events.published()
    assert published and [e.kind for e in published] == kinds(app)
    story = app.store.list_events(job_id=job_id, limit=100)
    seen = [e.kind for e in story]
    assert seen[0] == EventKind.LEDGER and story[0].data["flow"] == "escrowed"
    assert EventKind.JOB_SUBMITTED in seen and EventKind.DISPUTE in seen
    failed = [e for e in story if e.kind == EventKind.TASK_FAILED]
    assert failed and failed[-1].data["code"] == "NO_AGREEMENT" and failed[-1].data["final"]
    [finished] = [e for e in story if e.kind == EventKind.JOB_FINISHED]
    assert finished.data["state"] == "failed" and finished.account == "alice"
    assert "NO_AGREEMENT" in finished.message
    refund = [e for e in story if e.kind == EventKind.LEDGER and e.data["flow"] == "refunded"]
    assert refund and refund[0].data["dst"] == "client:alice"
    disputes = [e for e in story if e.kind == EventKind.DISPUTE]
    assert {fleet[0].id, fleet[1].id} <= set(disputes[0].data["nodes"])  # type: ignore[arg-type]
    # the metrics counted the same things
    assert sample(app, "sparegrid_disputes_total", state="open") >= 1
    assert sample(app, "sparegrid_task_failures_total", final="true") == 1
    assert sample(app, "sparegrid_results_total", kind="echo", outcome="pending") >= 1
    assert sample(app, "sparegrid_events_total", kind="job.finished") == 1
    assert sample(app, "sparegrid_credit_total", flow="refunded") == refund[0].data["amount"]


def test_quarantine_ban_and_reinstatement_are_events(tmp_path: Path) -> None:
    app = make_app(tmp_path, trust=TrustConfig(warmup=10**9, max_strikes=2))
    node = FakeNode(app, "n")
    app.reputations.invalid(node.id, "a forged result")
    assert EventKind.QUARANTINE not in kinds(app)  # one strike of two
    app.reputations.invalid(node.id, "another forged result")
    app.reputations.ban(node.id, "caught <cheating>")
    app.reputations.reinstate(node.id, "")
    found = app.store.list_events(node_ids=[node.id])
    assert [e.kind for e in found] == ["node.quarantined", "node.banned", "node.reinstated"]
    assert "another forged result" in found[0].message and found[0].data["strikes"] == 2
    assert found[1].message.endswith("banned: caught <cheating>")


def test_successful_results_pay_and_count(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    account = make_client(app)
    node = FakeNode(app, "n")
    node.connect(credit=0)
    echo(app, account, 3)
    run(node)
    app.events.published()
    assert sample(app, "sparegrid_results_total", kind="echo", outcome="accepted") == 3
    assert sample(app, "sparegrid_credit_total", flow="paid") == 3
    assert sample(app, "sparegrid_credit_total", flow="escrowed") > 0
    text = generate_latest(app.metrics.registry).decode()
    assert "sparegrid_tasks_leased_total 3.0" in text


def test_hostile_strings_never_become_label_values(tmp_path: Path) -> None:
    """A node's error code, a client's job name and any other string from outside stay out
    of the labels: a thousand distinct ones make no new series."""
    app = make_app(tmp_path)
    before = len(generate_latest(app.metrics.registry).splitlines())
    for i in range(1000):
        app.metrics.event(
            Event(
                f"e{i}",
                0.0,
                f"kind-{i}",
                "m",
                data={"flow": f"f{i}", "amount": 1, "state": f"s{i}", "final": f"x{i}"},
            )
        )
        app.metrics.event(Event(f"d{i}", 0.0, "dispute", "m", data={"state": f"<{i}>"}))
        app.metrics.event(Event(f"l{i}", 0.0, "ledger", "m", data={"flow": f"{i}", "amount": 1}))
    text = generate_latest(app.metrics.registry).decode()
    assert len(text.splitlines()) - before <= 20  # a few series (each 2 lines), not 3000
    assert 'sparegrid_events_total{kind="other"} 1000.0' in text
    assert 'sparegrid_disputes_total{state="other"} 1000.0' in text
    assert 'sparegrid_credit_total{flow="other"} 1000.0' in text


async def test_a_failed_call_leaves_no_event(tmp_path: Path) -> None:
    app = make_app(tmp_path)

    def fails() -> None:
        app.events.emit(EventKind.BAN, "never happened", node_id="n1")
        raise ValueError("the call failed after emitting")

    def works() -> None:
        app.events.emit(EventKind.BAN, "happened", node_id="n2")

    bad, good = app.call(fails), app.call(works)
    with pytest.raises(ValueError):
        await bad
    await good
    assert [e.message for e in app.store.list_events()] == ["happened"]
    assert app.events.published() == []  # published already, by the group commit


def test_old_events_are_trimmed_to_the_bound(tmp_path: Path) -> None:
    app = make_app(tmp_path, events=EventConfig(keep=20))
    for i in range(50):
        app.events.emit(EventKind.LEDGER, f"event {i}")
    app.events.published()
    assert app.events.trim() == 30
    assert app.store.list_events(limit=100)[0].message == "event 30"


async def test_watch_events_lists_follows_and_logs_json(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    stub = admin_pb2_grpc.AdminServiceStub(served.channel)
    admin = served.auth(served.admin_key)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        async for _ in stub.WatchEvents(
            admin_pb2.WatchEventsRequest(), metadata=served.auth(served.alice_key)
        ):
            pass
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert code_of(refused.value) == "NOT_ADMIN"
    listed = [r async for r in stub.WatchEvents(admin_pb2.WatchEventsRequest(), metadata=admin)]
    granted = [e for r in listed for e in r.events if e.kind == "ledger"]
    assert {json.loads(e.data_json)["dst"] for e in granted} >= {"client:alice", "client:bob"}

    caplog.set_level(logging.INFO, logger="sparegrid.events")
    stream = stub.WatchEvents(admin_pb2.WatchEventsRequest(limit=1, follow=True), metadata=admin)
    first = await stream.read()
    assert len(first.events) == 1  # the latest one
    assert (await stream.read()).events == []  # following from here
    await stub.GrantCredit(
        admin_pb2.GrantCreditRequest(name="alice", amount=7, reason="<b>thanks</b>"),
        metadata=admin,
    )
    new = await asyncio.wait_for(stream.read(), 10)
    # the grant's ledger movement, and the admin event naming who granted it
    assert sorted(e.kind for e in new.events) == ["admin", "ledger"]
    [event] = [e for e in new.events if e.kind == "ledger"]
    assert event.kind == "ledger" and event.seq > first.events[0].seq
    assert json.loads(event.data_json)["amount"] == 7 and "<b>thanks</b>" in event.message
    stream.cancel()
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "sparegrid.events"]
    assert any(line["id"] == event.id and line["kind"] == "ledger" for line in lines)
