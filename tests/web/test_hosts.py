"""What a page of another site can reach in an operator's browser, in process: /metrics
answers only to names no other site can rebind (DNS rebinding), and over HTTPS the
dashboard's session cookie carries the `__Host-` prefix."""

from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter

from sparegrid.cli.main import build_parser
from sparegrid.coordinator.web import http as web_http
from sparegrid.coordinator.web.dashboard import Dashboard
from tests.coordinator.helpers import make_app


def _metrics(hosts: list[str]) -> httpx.AsyncClient:
    registry = CollectorRegistry()
    Counter("sparegrid_probe", "a series to read", registry=registry).inc()
    transport = httpx.ASGITransport(
        app=web_http.metrics_app(registry, hosts), client=("127.0.0.1", 1)
    )
    return httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:9464")


async def test_metrics_refuse_a_host_another_site_could_rebind() -> None:
    async with _metrics(["127.0.0.1", "prom.internal"]) as http:
        for host in [
            "127.0.0.1:9464",
            "localhost:9464",
            "[::1]:9464",
            "10.0.0.5",
            "prom.internal:9464",
            "PROM.internal.",
        ]:
            response = await http.get("/metrics", headers={"host": host})
            assert response.status_code == 200, host
            assert "sparegrid_probe_total 1.0" in response.text
        refused = await http.get("/metrics", headers={"host": "rebound.example:9464"})
        assert refused.status_code == 403
        assert "sparegrid_probe" not in refused.text
        assert "'rebound.example:9464'" in refused.text
        assert "--metrics-host rebound.example" in refused.text


async def test_ready_answers_what_it_is_told_and_refuses_a_rebound_host_too() -> None:
    registry = CollectorRegistry()
    answer = (False, "standing by: another coordinator is serving from the PostgreSQL ...")
    app = web_http.metrics_app(registry, ["127.0.0.1"], ready=lambda: answer)
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 1))
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:9464") as http:
        standby = await http.get("/ready")
        assert standby.status_code == 503 and standby.text == answer[1] + "\n"
        refused = await http.get("/ready", headers={"host": "rebound.example:9464"})
        assert refused.status_code == 403 and "PostgreSQL" not in refused.text
        answer = (True, "serving from the PostgreSQL ...")
        assert (await http.get("/ready")).status_code == 200
    async with _metrics(["127.0.0.1"]) as http:  # an endpoint told nothing has no /ready
        assert (await http.get("/ready")).status_code == 404


def test_the_rule_for_host_headers() -> None:
    names = frozenset({"grid.example.org"})
    assert web_http.host_allowed(None, names)  # no browser leaves Host out
    assert web_http.host_allowed("grid.example.org:9464", names)
    assert web_http.host_allowed("[2001:db8::1]:9464", names) and web_http.host_allowed(
        "192.0.2.1", names
    )
    assert web_http.host_allowed(
        "app.localhost:9464", names
    )  # browsers keep *.localhost on loopback
    for host in ["evil.example", "127.0.0.1.evil.example", "grid.example.org.evil", ""]:
        assert not web_http.host_allowed(host, names), host


def test_metrics_host_flag_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPAREGRID_METRICS_HOSTS", "prom.internal, coordinator")
    args = build_parser().parse_args(
        ["coordinator", "serve", "--metrics-port", "0", "--metrics-host", "Grid.Example.org"]
    )
    assert args.metrics_hosts == ["prom.internal", "coordinator", "grid.example.org"]
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["coordinator", "serve", "--metrics-host", "a b/c"])
    assert exit_.value.code == 2


async def test_over_https_the_session_cookie_has_the_host_prefix(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    _, key = app.accounts.create("alice", 0)
    dashboard = Dashboard(app)
    transport = httpx.ASGITransport(app=dashboard.asgi, client=("127.0.0.1", 5000))
    async with httpx.AsyncClient(transport=transport, base_url="https://grid.example.org") as https:
        response = await https.post("/login", data={"api_key": key})
        assert response.status_code == 303
        cookie = response.headers["set-cookie"]
        assert cookie.startswith("__Host-sparegrid_session=")
        assert "Secure" in cookie and "Path=/" in cookie and "Domain" not in cookie
        token = https.cookies["__Host-sparegrid_session"]
        https.cookies.clear()
        # a bare-named cookie (one a sibling subdomain or a plain-HTTP page could set) is
        # not a session over HTTPS
        bare = await https.get("/client", headers={"cookie": f"sparegrid_session={token}"})
        assert bare.headers["location"] == "/login"
        https.cookies.set("__Host-sparegrid_session", token)
        assert (await https.get("/client")).status_code == 200
        signed_out = await https.post("/logout")
        assert signed_out.headers["set-cookie"].startswith("__Host-sparegrid_session=")
        assert "Secure" in signed_out.headers["set-cookie"]
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8080") as http:
        response = await http.post("/login", data={"api_key": key})  # plain HTTP: as before
        assert response.headers["set-cookie"].startswith("sparegrid_session=")
        assert (await http.get("/client")).status_code == 200
