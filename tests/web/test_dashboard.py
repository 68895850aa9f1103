"""The dashboard over HTTP against a live coordinator: sign-in and its cookie, each role's
page, a client seeing only its own jobs (pages and frames), everything escaped, the key
kept out of URLs and logs, and the attacks a sign-in form invites."""

import re
import time

import pytest
from markupsafe import escape

from tests.web.conftest import Site

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]
HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>'


def test_sign_in_sets_a_strict_http_only_cookie_and_picks_the_role_page(site: Site) -> None:
    http = site.browser()
    assert http.get("/client").headers["location"] == "/login"  # nothing without signing in
    page = http.get("/login")
    assert page.status_code == 200 and 'name="api_key"' in page.text
    assert "script-src" not in page.headers["content-security-policy"]  # no script at all
    assert page.headers["x-frame-options"] == "DENY"
    response = http.post("/login", data={"api_key": site.admin_key})
    assert response.status_code == 303 and response.headers["location"] == "/"
    cookie = response.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
    assert site.admin_key not in cookie
    assert http.get("/").headers["location"] == "/operator"
    for key, home in [(site.alice_key, "/client"), (site.volunteer_key, "/volunteer")]:
        assert site.browser(key).get("/").headers["location"] == home
    operator = http.get("/operator")
    assert operator.status_code == 200
    assert "node1" in operator.text and "node2" in operator.text and "volunteer2" in operator.text
    ledger = http.get("/operator/ledger")
    assert 'id="ledger-result"' in ledger.text and "The ledger balances" in ledger.text
    signed_out = http.post("/logout")
    assert signed_out.status_code == 303
    assert http.get("/operator").headers["location"] == "/login"


def test_a_wrong_key_is_refused_and_counted(site: Site) -> None:
    http = site.browser()
    response = http.post("/login", data={"api_key": "sg_not-a-key"})
    assert response.status_code == 401 and "not known to this coordinator" in response.text
    assert "set-cookie" not in response.headers
    assert http.post("/login", data={}).status_code == 401
    assert http.get("/login", params={"api_key": site.admin_key}).status_code == 200
    assert http.get("/operator").headers["location"] == "/login"  # a key in a URL is ignored
    forged = http.post(
        "/login", data={"api_key": site.admin_key}, headers={"origin": "https://evil.example"}
    )
    assert forged.status_code == 403 and "set-cookie" not in forged.headers
    forged_cookie = site.browser()
    forged_cookie.cookies.set("sparegrid_session", "A" * 43)
    assert forged_cookie.get("/client").headers["location"] == "/login"


def test_behind_a_tls_proxy_sign_in_says_what_the_proxy_must_pass_on(site: Site) -> None:
    """Behind a TLS-terminating proxy that passed no scheme, the operator's own sign-in was
    refused as "from another site", which sent them hunting for an attacker."""
    http = site.browser()
    proxied = {"host": "grid.example.org", "origin": "https://grid.example.org"}
    refused = http.post("/login", data={"api_key": site.admin_key}, headers=proxied)
    assert refused.status_code == 403 and "set-cookie" not in refused.headers
    assert "posted from https://grid.example.org" in refused.text
    assert "this dashboard is http://grid.example.org" in refused.text
    assert "proxy_set_header X-Forwarded-Proto $scheme" in refused.text
    # the proxy (on loopback, which the dashboard trusts for it) passing the scheme on
    passed = http.post(
        "/login",
        data={"api_key": site.admin_key},
        headers={**proxied, "x-forwarded-proto": "https"},
    )
    assert passed.status_code == 303 and "Secure" in passed.headers["set-cookie"]
    assert passed.headers["set-cookie"].startswith("__Host-sparegrid_session=")


def test_another_sites_form_cannot_sign_anyone_out(site: Site) -> None:
    alice = site.browser(site.alice_key)
    forged = alice.post("/logout", headers={"origin": "https://evil.example"})
    assert forged.status_code == 403 and "set-cookie" not in forged.headers
    assert alice.get("/client").status_code == 200  # still signed in
    assert alice.post("/logout").status_code == 303  # from the dashboard's own page
    assert alice.get("/client").headers["location"] == "/login"


def test_role_pages_refuse_who_they_are_not_for(site: Site) -> None:
    alice = site.browser(site.alice_key)
    refused = alice.get("/operator")
    assert refused.status_code == 403 and "admin accounts" in refused.text
    assert alice.get("/operator/ledger").status_code == 404
    volunteer = site.browser(site.volunteer_key).get("/volunteer")
    assert volunteer.status_code == 200
    assert "node1" in volunteer.text and "node2" not in volunteer.text  # its own node only
    assert 'id="earnings"' in volunteer.text
    nobody = alice.get("/volunteer")
    assert 'id="no-nodes"' in nobody.text


def test_a_client_sees_only_its_own_jobs_and_names_render_as_text(site: Site) -> None:
    with site.client(site.alice_key) as client:
        job = client.echo("hello", tasks=3, name=HOSTILE).wait(timeout=60)
    assert job.state == "succeeded"
    alice, bob = site.browser(site.alice_key), site.browser(site.bob_key)
    listed = alice.get("/client")
    assert job.id in listed.text
    page = alice.get(f"/jobs/{job.id}")
    assert page.status_code == 200 and 'id="job-state">succeeded<' in page.text
    assert "<script>" not in page.text and "<img src=x" not in page.text
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in page.text
    assert job.id not in bob.get("/client").text
    past = alice.get(f"/jobs/{job.id}/frames/{1 << 64}.png")  # SQLite: no such number (500)
    assert past.status_code == 404
    for path in (f"/jobs/{job.id}", f"/jobs/{job.id}/frames/0.png"):
        hidden = bob.get(path)
        assert hidden.status_code == 404, path
        assert job.id not in hidden.text and "hello" not in hidden.text
    missing = bob.get("/jobs/no-such-job")  # the same answer as another's job: no oracle
    assert missing.status_code == 404 and missing.text == bob.get(f"/jobs/{job.id}").text
    assert bob.get(f"/jobs/{'x' * 5000}").status_code == 404
    admin = site.browser(site.admin_key).get(f"/jobs/{job.id}")
    assert admin.status_code == 200  # the operator sees every job
    operator = site.browser(site.admin_key).get("/operator")
    assert "<script>alert" not in operator.text and "&lt;script&gt;" in operator.text


def test_the_key_never_reaches_the_log(site: Site) -> None:
    site.browser(site.alice_key).get("/client")
    time.sleep(0.2)
    assert site.cluster.coordinator is not None
    log = site.cluster.coordinator.log.read_text()
    assert site.alice_key not in log and site.admin_key not in log


# after the echo jobs above: a worker whose executor started on a task without inputs
# still reads its cache for a render (the cache folder exists before the sandbox does)
def test_thumbnails_of_a_render_job(site: Site, scenes) -> None:  # type: ignore[no-untyped-def]
    with site.client(site.alice_key) as client:
        job = client.render(
            scenes / "anim.blend", frames="1-2", samples=4, resolution="48x36"
        ).wait(timeout=150)
    assert job.state == "succeeded", job.error
    alice = site.browser(site.alice_key)
    page = alice.get(f"/jobs/{job.id}")
    assert f"/jobs/{job.id}/frames/0.png" in page.text
    thumb = alice.get(f"/jobs/{job.id}/frames/0.png")
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/png"
    assert thumb.content.startswith(b"\x89PNG\r\n\x1a\n")
    assert alice.get(f"/jobs/{job.id}/frames/7.png").status_code == 404
    assert site.browser(site.bob_key).get(f"/jobs/{job.id}/frames/0.png").status_code == 404


def test_a_failed_task_shows_its_reason_and_events(site: Site, scenes) -> None:  # type: ignore[no-untyped-def]
    with site.client(site.alice_key) as client:  # a texture not packed: workers refuse it
        digest = client.upload(scenes / "missing.blend")
        params = {"frame_start": 1, "samples": 4, "resolution": [48, 36]}
        job = client.submit("render", params, {"scene": digest}, max_attempts=1)
        job = job.wait(timeout=120)
        [result] = job.results()
    assert job.state == "failed" and result.error
    page = site.browser(site.alice_key).get(f"/jobs/{job.id}")
    assert 'class="failed-task"' in page.text
    assert str(escape(result.error.strip())) in page.text  # the worker's reason, as text
    assert re.search(r'id="job-error">[^<]*task 0 failed', page.text)
    assert "task.failed" in page.text and "job.finished" in page.text


# last: it locks this address out of signing in for a minute
def test_too_many_failed_sign_ins_are_slowed(site: Site) -> None:
    http = site.browser()
    codes = [http.post("/login", data={"api_key": f"sg_guess{i}"}).status_code for i in range(12)]
    # earlier tests failed twice from this address too: at most 10 tries a minute in all
    assert set(codes) == {401, 429} and codes.index(429) <= 10 and codes[-2:] == [429, 429]
    # even the right key waits out the window from that address
    assert http.post("/login", data={"api_key": site.alice_key}).status_code == 429
