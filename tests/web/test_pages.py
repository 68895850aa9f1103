"""The dashboard's pages in process (Starlette's test client over the in-memory store and
a fake clock): disputes with their evidence, why a node is quarantined, earnings per day,
sessions that end with their key, and the sign-in's limits."""

import asyncio
import re
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from sparegrid.coordinator.domain import Account
from sparegrid.coordinator.services.reputation import TrustConfig
from sparegrid.coordinator.web.dashboard import Dashboard
from sparegrid.coordinator.web.sessions import MAX_ACCOUNT_SESSIONS, Sessions
from tests.coordinator.helpers import FakeNode, echo, make_app
from tests.coordinator.verifying import nodes, run, submit


def http(dashboard: Dashboard) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=dashboard.asgi, client=("127.0.0.1", 5000))
    return httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8080")


async def sign_in(client: httpx.AsyncClient, key: str) -> None:
    response = await client.post("/login", data={"api_key": key})
    assert response.status_code == 303


async def test_the_operator_sees_disputes_with_their_evidence(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    _, admin_key = app.accounts.create("root", 0, is_admin=True)
    fleet = nodes(app, "o1", "o2", "o3")
    job_id = submit(app, 1, replicas=2, quorum=2)
    run(fleet[0], b"wrong")
    run(fleet[1])
    app.events.published()
    async with http(Dashboard(app)) as client:
        await sign_in(client, admin_key)
        page = (await client.get("/operator")).text
    disputes = page[page.index('id="disputes"') : page.index("Recent events")]
    assert f'href="/jobs/{job_id}"' in disputes and "open" in disputes
    assert fleet[0].id in disputes and fleet[1].id in disputes  # each result's node
    assert "comparisons" in disputes  # what each comparison measured
    assert "dispute" in page[page.index('id="events"') :]


async def test_a_volunteer_sees_why_its_node_is_paused_or_quarantined_and_what_it_earned(
    tmp_path: Path,
) -> None:
    app = make_app(tmp_path, trust=TrustConfig(warmup=0, floor=0.0, max_strikes=1))
    _, key = app.accounts.create("vol", 0)
    node = FakeNode(app, "rig-1", owner="vol")
    node.connect(credit=0)
    client_account: Account = app.accounts.create("alice", 1000)[0]
    echo(app, client_account, 3)
    run(node)
    app.scheduler.grant(node.id, 0, 0, reset=True)  # its owner came back to the GPU
    async with http(Dashboard(app)) as client:
        await sign_in(client, key)
        paused = (await client.get("/volunteer")).text
    assert "paused by its owner&#39;s policy" in paused
    app.clock.advance(86400)  # type: ignore[attr-defined]
    app.reputations.invalid(node.id, "a result for work it never leased")
    app.events.published()
    async with http(Dashboard(app)) as client:
        await sign_in(client, key)
        page = (await client.get("/volunteer")).text
    row = page[page.index('id="nodes"') : page.index("Earnings")]
    assert "rig-1" in row and "quarantined" in row
    assert "a result for work it never leased" in row
    assert 'id="earned">Earned in all: 3 credit.' in page
    bars = re.findall(r'<rect [^>]*height="(\d+)"', page)
    assert len(bars) == 14 and bars[-2] == "100" and bars[-1] == "0"  # yesterday's 3 credit
    assert "node.quarantined" in page


async def test_a_session_ends_with_its_account_and_expires(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    _, key = app.accounts.create("alice", 10)
    dashboard = Dashboard(app)
    async with http(dashboard) as client:
        await sign_in(client, key)
        assert (await client.get("/client")).status_code == 200
        session = next(iter(dashboard.sessions._by_hash.values()))
        session.key_hash = "0" * 64  # as after the key was rotated
        assert (await client.get("/client")).headers["location"] == "/login"
        assert not dashboard.sessions._by_hash  # and it is gone


async def test_a_job_cancelled_before_any_task_ran_shows_no_progress(tmp_path: Path) -> None:
    """Its cancelled tasks counted as ended: the client's page said 100%."""
    app = make_app(tmp_path)
    alice, key = app.accounts.create("alice", 100)
    job_id = echo(app, alice, 3)
    app.jobs.cancel(alice, job_id)
    async with http(Dashboard(app)) as client:
        await sign_in(client, key)
        page = (await client.get("/client")).text
    row = page[page.index(f'href="/jobs/{job_id}"') :]
    assert 'value="0.000"></progress> 0%' in row[: row.index("</tr>")]


def test_sessions_expire_and_stay_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    sessions = Sessions(ttl=60, limit=3)
    tokens = [sessions.open(f"a{i}", "h") for i in range(4)]
    assert sessions.get(tokens[0]) is None  # the oldest went past the limit
    assert sessions.get(tokens[3]) is not None and sessions.get("x" * 500) is None
    import time

    later = time.time() + 61
    monkeypatch.setattr(time, "time", lambda: later)
    assert sessions.get(tokens[3]) is None


def test_one_account_signing_in_again_and_again_ends_only_its_own_oldest_sessions() -> None:
    """Any valid key signing in 10,000 times pushed every other account out, the admins'
    sessions included: the limit was on all sessions together."""
    sessions = Sessions(ttl=60, limit=40)
    admin = sessions.open("admin", "h")
    mallory = [sessions.open("mallory", "h") for _ in range(100)]
    assert sessions.get(admin) is not None
    assert sum(sessions.get(t) is not None for t in mallory) == MAX_ACCOUNT_SESSIONS
    assert sessions.get(mallory[0]) is None and sessions.get(mallory[-1]) is not None
    sessions.close(mallory[-1])
    assert sessions.get(mallory[-1]) is None


async def test_pages_wait_on_the_dashboards_own_threads_not_on_the_coordinators(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pages and thumbnails were made on the threads that uploads and the coordinator's own
    work wait for: any signed-in account asking for many large frames at once held them."""
    app = make_app(tmp_path)
    _, key = app.accounts.create("alice", 10)
    dashboard = Dashboard(app)
    release = threading.Event()
    real = dashboard.env.get_template

    class Slow:  # a page that takes long to make (the base template it extends does not)
        def __init__(self, name: str) -> None:
            self.template = real(name)

        def render(self, **values: object) -> str:
            release.wait(10)
            return self.template.render(**values)

    def slow(name: str, *parent: Any) -> Any:
        return real(name, *parent) if parent else Slow(name)

    async with http(dashboard) as client:
        await sign_in(client, key)
        monkeypatch.setattr(dashboard.env, "get_template", slow)
        pages = [asyncio.ensure_future(client.get("/client")) for _ in range(12)]
        try:
            await asyncio.sleep(0.2)  # every page is being made, or waits to be
            assert await asyncio.wait_for(asyncio.to_thread(lambda: "free"), 2) == "free"
        finally:
            release.set()
        assert [(await page).status_code for page in pages] == [200] * 12


async def test_a_huge_sign_in_form_is_cut_and_refused(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    async with http(Dashboard(app)) as client:
        response = await client.post(
            "/login",
            content=b"api_key=" + b"A" * 1_000_000,
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
    assert response.status_code == 401


async def test_disabling_rotating_or_revoking_ends_dashboard_sessions(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    _, key = app.accounts.create("alice", 10)
    dashboard = Dashboard(app)
    async with http(dashboard) as client:
        await sign_in(client, key)
        app.accounts.set_disabled("alice", True)
        assert (await client.get("/client")).headers["location"] == "/login"
        assert (await client.post("/login", data={"api_key": key})).status_code == 401
        app.accounts.set_disabled("alice", False)
        await sign_in(client, key)
        _, new_key = app.accounts.rotate_key("alice")
        assert (await client.get("/client")).headers["location"] == "/login"
        assert (await client.post("/login", data={"api_key": key})).status_code == 401
        await sign_in(client, new_key)
        app.accounts.revoke_key("alice")
        assert (await client.get("/client")).headers["location"] == "/login"


async def test_the_job_page_shows_its_webhook_call_as_text(tmp_path: Path) -> None:
    from sparegrid.coordinator.services.jobs import JobSpec

    app = make_app(tmp_path)
    alice, key = app.accounts.create("alice", 100)
    spec = JobSpec(kind="echo", params=b'{"tasks": 1}', webhook_url="https://hooks.example.com/x")
    job_id = app.jobs.submit(alice, spec).id
    async with http(Dashboard(app)) as client:
        await sign_in(client, key)

        async def shown() -> str:
            page = (await client.get(f"/jobs/{job_id}")).text
            return page[page.index('id="job-webhook">') :].split("</td>")[0]

        assert "called when it ends" in await shown()
        app.jobs.cancel(alice, job_id)  # ended: its call is owed
        [call] = app.store.get_webhooks(job_id)
        app.webhooks.outcome(call, "HTTP 503 <b>down</b>")
        text = await shown()
        assert "pending, attempt 2 of 10 at " in text
        assert "(last: HTTP 503 &lt;b&gt;down&lt;/b&gt;)" in text
        app.webhooks.outcome(call, "")
        assert "delivered after 2 attempts (" in await shown()
