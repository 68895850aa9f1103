"""Scraping /metrics of a live coordinator and its workers while a real job runs: the
series move, the endpoints are off unless asked for, and a taken port fails clearly."""

import json
import os
import socket
import subprocess
import sys
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from sparegrid.sdk import AdminClient
from tests.web.conftest import Site

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = httpx.get(url, timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:  # type: ignore[type-arg]
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_series_move_while_a_job_runs(site: Site, tmp_path) -> None:  # type: ignore[no-untyped-def]
    data = tmp_path / "data.bin"
    data.write_bytes(os.urandom(1 << 20))
    with site.client(site.alice_key) as client:  # an input for the workers' caches
        assert client.checksum(data, tasks=2).wait(timeout=60).state == "succeeded"
    before = scrape(site.metrics)
    assert value(before, "sparegrid_sessions", state="active") == 2
    with site.client(site.alice_key) as client:
        job = client.echo("x", tasks=40, sleep_ms=100, name="metrics")
        deadline = time.monotonic() + 60
        during = scrape(site.metrics)
        while value(during, "sparegrid_results_total", kind="echo", outcome="accepted") == value(
            before, "sparegrid_results_total", kind="echo", outcome="accepted"
        ):
            assert time.monotonic() < deadline, "no result was counted"
            time.sleep(0.2)
            during = scrape(site.metrics)
        worker_during = [scrape(url) for url in site.worker_metrics]
        job = job.wait(timeout=120)
    assert job.state == "succeeded", job.error
    after = scrape(site.metrics)
    accepted = "sparegrid_results_total"
    assert (
        value(before, accepted, kind="echo", outcome="accepted")
        < value(during, accepted, kind="echo", outcome="accepted")
        < value(after, accepted, kind="echo", outcome="accepted")
    )
    assert (
        value(after, "sparegrid_tasks_leased_total")
        >= value(before, "sparegrid_tasks_leased_total") + 40
    )
    assert value(after, "sparegrid_credit_total", flow="paid") > value(
        before, "sparegrid_credit_total", flow="paid"
    )
    assert value(after, "sparegrid_credit_total", flow="refunded") >= value(
        before, "sparegrid_credit_total", flow="refunded"
    )
    assert (
        value(after, "sparegrid_events_total", kind="job.finished")
        == value(before, "sparegrid_events_total", kind="job.finished") + 1
    )
    assert value(after, "sparegrid_group_commit_seconds_count") > value(
        before, "sparegrid_group_commit_seconds_count"
    )
    assert value(after, "sparegrid_event_loop_lag_seconds_count") > 0
    # known-answer canaries are echo jobs the coordinator keeps: present, not necessarily 0
    for gauge in (
        "sparegrid_queue_tasks",
        "sparegrid_queue_oldest_seconds",
        "sparegrid_jobs_active",
    ):
        assert (gauge, (("kind", "render"),)) in after and (gauge, (("kind", "echo"),)) in after
    # the workers: tasks timed, credit earned, a device seen working
    time.sleep(1.5)  # a snapshot refresh
    worker_after = [scrape(url) for url in site.worker_metrics]
    timed = sum(
        value(w, "sparegrid_worker_task_seconds_count", kind="echo", outcome="ok")
        for w in worker_after
    )
    assert timed >= 40
    assert sum(value(w, "sparegrid_worker_credit_earned_total") for w in worker_after) > sum(
        value(w, "sparegrid_worker_credit_earned_total") for w in worker_during
    )
    for w in worker_after:
        assert value(w, "sparegrid_worker_connected") == 1
        states = {
            dict(labels)["state"]
            for (name, labels), v in w.items()
            if name == "sparegrid_worker_device_state" and v == 1
        }
        assert len(states) == 1  # one state per device now
        assert ("sparegrid_worker_cache_bytes", ()) in w
    assert sum(value(w, "sparegrid_worker_cache_bytes") for w in worker_after) > 0  # the scene


def test_metrics_refuse_a_name_another_site_could_rebind(site: Site) -> None:
    """A page of another site, its name rebound to 127.0.0.1, sends its own name as Host."""
    port = site.metrics.rsplit(":", 1)[1].split("/")[0]
    refused = httpx.get(site.metrics, headers={"host": f"rebound.example:{port}"}, timeout=10)
    assert refused.status_code == 403 and "--metrics-host rebound.example" in refused.text
    assert "sparegrid_" not in refused.text
    local = httpx.get(site.metrics, headers={"host": f"localhost:{port}"}, timeout=10)
    assert local.status_code == 200 and "sparegrid_jobs_active" in local.text


def test_metrics_stay_off_unless_asked_and_a_taken_port_fails(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "sparegrid.cli.main",
                "coordinator",
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
                str(tmp_path / "c"),
                "--metrics-port",
                str(port),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={"XDG_CONFIG_HOME": str(tmp_path / "cfg"), "PATH": "/usr/bin:/bin"},
        )
    assert proc.returncode == 1
    assert f"cannot serve the metrics on 127.0.0.1:{port}" in proc.stderr
    assert "pick another port" in proc.stderr
    assert not (tmp_path / "c" / "metrics.addr").exists()


def cli(site: Site, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "sparegrid.cli.main",
        "admin",
        *args,
        "--coordinator",
        site.cluster.address,
    ]


def test_admin_events_lists_and_follows_as_json(site: Site) -> None:
    env = site.cluster.env
    listed = subprocess.run(
        cli(site, "events", "--json", "--limit", "5"),
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    lines = [json.loads(line) for line in listed.stdout.splitlines()]
    assert 1 <= len(lines) <= 5 and all({"seq", "id", "kind", "message"} <= set(e) for e in lines)
    assert [e["seq"] for e in lines] == sorted(e["seq"] for e in lines)
    table = subprocess.run(
        cli(site, "events"), env=env, capture_output=True, text=True, timeout=60, check=True
    )
    assert "kind" in table.stdout and lines[-1]["id"] in table.stdout
    bad = subprocess.run(
        cli(site, "events", "--limit", "0"),
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert bad.returncode == 2 and "--limit takes 1 to 10000" in bad.stderr
    follow = subprocess.Popen(
        cli(site, "events", "--follow", "--json", "--limit", "1"),
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert follow.stdout is not None
        first = json.loads(follow.stdout.readline())
        with AdminClient(site.cluster.address, api_key=site.admin_key) as admin:
            deadline = time.monotonic() + 30
            while True:  # the follow may open after the first grant: grant until one shows
                admin.grant("bob", 3, "followed")
                line = json.loads(follow.stdout.readline())
                if line["seq"] > first["seq"] and "followed" in line["message"]:
                    break
                assert time.monotonic() < deadline
        assert line["kind"] == "ledger" and line["data"]["flow"] == "granted"
    finally:
        follow.terminate()
        follow.wait(timeout=10)
        if follow.stdout is not None:
            follow.stdout.close()
