"""What a client sees through the CLI, against real coordinator and worker processes: cost
before submit, prices, progress with an ETA, cancelled jobs, results fetched as they
arrive, a cap on an account's running tasks, and webhooks."""

import asyncio
import json
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from sparegrid.coordinator.services.prices import DEFAULT_PRICES
from sparegrid.sdk import AdminClient, AsyncClient, Client, InvalidArgumentError, JobState
from sparegrid.wire.webhook import verify
from tests.e2e.conftest import Cluster
from tests.e2e.helpers import online_nodes, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


def start(
    cluster: Cluster, workers: int, *flags: str, credit: int = 1000
) -> tuple[AdminClient, Client]:
    cluster.start_coordinator(*flags)
    for i in range(workers):
        cluster.start_worker(f"node{i + 1}")
    admin = AdminClient(cluster.address, api_key=cluster.admin_key)
    _, key = admin.create_account("alice", credit=credit)
    cluster.env["SPAREGRID_API_KEY"] = key
    cluster.env["SPAREGRID_COORDINATOR"] = cluster.address
    wait_for(lambda: online_nodes(admin) == workers, what=f"{workers} workers online")
    return admin, Client(cluster.address, api_key=key)


def cli(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sparegrid.cli.main", *args],
        capture_output=True,
        text=True,
        env=cluster.env,
        check=False,
        timeout=90,
    )


def test_dry_run_shows_the_cost_and_stores_nothing(cluster, tmp_path: Path) -> None:
    _, client = start(cluster, 0, credit=100)
    prices = cli(cluster, "job", "prices", "--json")
    assert prices.returncode == 0, prices.stderr
    listed = {p["kind"]: (p["price_credit"], p["price_units"]) for p in json.loads(prices.stdout)}
    assert listed == {k: (p.credit, p.units) for k, p in DEFAULT_PRICES.items()}
    shown = cli(cluster, "job", "prices")
    assert "1 per 10,000,000 pixel-samples" in shown.stdout

    dry = cli(cluster, "job", "submit", "echo", "--tasks", "5", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "estimate (nothing submitted)" in dry.stdout
    assert "15 credit (what is not spent comes back)" in dry.stdout
    assert "adaptive: up to 3 paid results per task" in dry.stdout
    data = tmp_path / "small.bin"
    data.write_bytes(b"x" * 4096)
    small = cli(
        cluster,
        "job",
        "submit",
        "checksum",
        "--input",
        str(data),
        "--tasks",
        "4",
        "--dry-run",
        "--json",
    )
    assert small.returncode == 0, small.stderr
    found = json.loads(small.stdout)
    assert (found["tasks"], found["work_units"], found["credit_per_pass"]) == (4, 4096, 4)
    assert "4 of its 4 task(s) are worth less than 1 each" in found["rounding"]
    assert client.list_jobs() == [] and client.account().balance == 100

    async def estimate_async() -> int:
        async with AsyncClient(cluster.address, api_key=cluster.env["SPAREGRID_API_KEY"]) as c:
            return (await c.estimate("echo", {"tasks": 5, "data": "hi"})).max_held

    assert asyncio.run(estimate_async()) == 15
    job = client.echo("hi", tasks=5)
    assert job.cost_held == 15  # what the estimate said
    job.cancel()

    short = cli(cluster, "job", "submit", "echo", "--tasks", "40", "--dry-run")
    assert short.returncode == 1
    assert "NOT ENOUGH" in short.stdout and "[INSUFFICIENT_CREDIT]" in short.stderr
    for args, code in [
        (("echo", "--dry-run", "--wait"), "BAD_FLAGS"),
        (("echo", "--json"), "BAD_FLAGS"),
        (("teleport", "--dry-run"), "UNKNOWN_KIND"),
        (("echo", "--tasks", "2", "--priority", "500"), "BAD_PRIORITY"),
        (("echo", "--webhook", "http://127.0.0.1:9/hook"), "BAD_WEBHOOK"),
    ]:
        bad = cli(cluster, "job", "submit", *args)
        assert bad.returncode == 1 and f"[{code}]" in bad.stderr, (args, bad.stderr)
        assert "Traceback" not in bad.stderr
    assert [j.id for j in client.list_jobs()] == [job.id]
    assert client.account().balance == 100


def test_wait_get_and_list_show_progress(cluster) -> None:
    _, client = start(cluster, 1)
    job = client.echo("hi", tasks=10, sleep_ms=2000)
    waiter = subprocess.Popen(
        [sys.executable, "-m", "sparegrid.cli.main", "job", "wait", job.id],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cluster.env,
    )
    wait_for(lambda: job.refresh().counts.succeeded >= 1, what="a task done")
    got = cli(cluster, "job", "get", job.id)
    assert got.returncode == 0
    eta = [line for line in got.stdout.splitlines() if line.startswith("eta")]
    assert eta and eta[0].split()[1][0].isdigit(), got.stdout
    out, err = waiter.communicate(timeout=60)
    assert waiter.returncode == 0, err
    assert f"job {job.id}" in out and "10 succeeded" in out  # the summary
    lines = [line for line in err.splitlines() if line.startswith(job.id[:12])]
    assert all(len(line) <= 80 for line in lines), lines
    running = [line for line in lines if " eta " in line and "tasks 10/10" not in line]
    assert running, err  # a line while it ran, with the time left
    assert "tasks 10/10  elapsed" in lines[-1] and "succeeded" in lines[-1]

    stuck = client.echo("slow", tasks=1, sleep_ms=60_000)
    account = cli(cluster, "account")
    assert account.returncode == 0, account.stderr
    held = next(line for line in account.stdout.splitlines() if "escrow of running" in line)
    assert held.split()[:2] == ["held", str(stuck.cost_held)]
    hold = next(line for line in account.stdout.splitlines() if line.startswith(stuck.id))
    assert f" {stuck.cost_held} " in hold and job.id not in account.stdout  # job ended
    cancelled = cli(cluster, "job", "cancel", stuck.id)
    assert cancelled.returncode == 0, cancelled.stderr
    listed = cli(cluster, "job", "list")
    row = next(line for line in listed.stdout.splitlines() if line.startswith(stuck.id))
    assert "cancelled" in row and "0/1, 1 cancelled" in row
    done = next(line for line in listed.stdout.splitlines() if line.startswith(job.id))
    assert "10/10" in done and "cancelled" not in done


def test_results_continue_fetches_only_what_is_new(cluster, tmp_path: Path) -> None:
    _, client = start(cluster, 1)
    job = client.echo("frame", tasks=6, sleep_ms=2500)
    out = tmp_path / "out"
    wait_for(lambda: job.refresh().counts.succeeded >= 1, what="a task done")
    first = cli(cluster, "job", "results", job.id, "--continue", "-o", str(out))
    assert first.returncode == 0, first.stderr
    fetched = int(first.stdout.split()[0])
    assert 1 <= fetched < 6 and "run this again" in first.stderr
    job.wait(timeout=60)
    second = cli(cluster, "job", "results", job.id, "--continue", "-o", str(out))
    assert second.returncode == 0, second.stderr
    assert second.stdout.startswith(f"{6 - fetched} new output(s)")
    assert f"{fetched} already there" in second.stdout and "6 of 6 tasks done" in second.stdout
    files = sorted(out.glob("task_*/*"))
    assert len(files) == 6 and all(f.read_bytes() == b"frame" for f in files)
    files[0].write_bytes(b"tampered")  # a file changed on disk, another lost
    files[1].unlink()
    third = cli(cluster, "job", "results", job.id, "--continue", "-o", str(out))
    assert third.stdout.startswith("2 new output(s)") and "4 already there" in third.stdout
    assert files[0].read_bytes() == b"frame" and files[1].read_bytes() == b"frame"
    index = json.loads((out / "results.json").read_text())
    assert index["job"] == job.id and all(r["verified"] for r in index["results"])

    other = client.echo("other", tasks=1).wait(timeout=60)
    refused = cli(cluster, "job", "results", other.id, "--continue", "-o", str(out))
    assert refused.returncode == 1 and "[OUTPUT_EXISTS]" in refused.stderr
    assert f"holds the results of job {job.id}" in refused.stderr
    assert json.loads((out / "results.json").read_text())["job"] == job.id

    not_render = cli(cluster, "job", "preview", job.id, "-o", str(tmp_path / "f.png"))
    assert not_render.returncode == 1 and "[NOT_A_RENDER]" in not_render.stderr


def test_running_cap_per_account(cluster) -> None:
    admin, client = start(cluster, 2, "--max-running-per-account", "1")
    job = client.echo("hi", tasks=6, sleep_ms=1500)
    _, key = admin.create_account("bob", credit=100)
    bob = Client(cluster.address, api_key=key)
    seen = 0
    bobs = None
    while not job.refresh().finished:
        seen = max(seen, job.counts.leased)
        if bobs is None and job.counts.succeeded >= 1:
            bobs = bob.echo("bob", tasks=1, sleep_ms=200)  # runs beside alice's
            assert bobs.wait(timeout=30).state is JobState.SUCCEEDED
            assert not job.refresh().finished  # it did not wait for alice's job
        time.sleep(0.05)
    assert job.state is JobState.SUCCEEDED and seen == 1
    refused = subprocess.run(
        [
            sys.executable,
            "-m",
            "sparegrid.cli.main",
            "coordinator",
            "serve",
            "--data-dir",
            str(cluster.root / "other"),
            "--max-running-per-account",
            "-1",
        ],
        capture_output=True,
        text=True,
        env=cluster.env,
        timeout=60,
    )
    assert refused.returncode != 0 and "--max-running-per-account is 0" in refused.stderr


class Hook(BaseHTTPRequestHandler):
    """Answers 500 to the first `failures` calls, then 204; records each call."""

    calls: list[tuple[dict[str, str], bytes, int]] = []
    failures = 0

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        status = 500 if Hook.failures > 0 else 204
        Hook.failures -= 1
        Hook.calls.append((dict(self.headers), body, status))
        self.send_response(status)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def serve_hook(port: int = 0) -> HTTPServer:
    HTTPServer.allow_reuse_address = True
    server = HTTPServer(("127.0.0.1", port), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_webhook_is_signed_retried_and_survives_a_restart(cluster) -> None:
    Hook.calls, Hook.failures = [], 1
    server = serve_hook()
    port = server.server_address[1]
    url = f"http://127.0.0.1:{port}/done"
    _, client = start(cluster, 1, "--webhook-allow-private")
    job = client.submit("echo", {"tasks": 2, "data": "hi"}, webhook_url=url)
    assert job.snapshot.has_webhook
    assert job.wait(timeout=60).state is JobState.SUCCEEDED
    wait_for(lambda: len(Hook.calls) >= 2, what="the webhook tried twice")
    (h1, b1, s1), (h2, b2, s2) = Hook.calls[:2]
    assert (s1, s2) == (500, 204) and b1 == b2  # the same call, tried again
    assert h1["X-Sparegrid-Delivery"] == h2["X-Sparegrid-Delivery"]
    secret_hex = cli(cluster, "account", "--webhook-secret").stdout.strip()
    assert secret_hex == client.account().webhook_secret and len(secret_hex) == 64
    secret = bytes.fromhex(secret_hex)
    assert verify(secret, h2["X-Sparegrid-Signature"], b2)
    assert not verify(cluster.env["SPAREGRID_API_KEY"].encode(), h2["X-Sparegrid-Signature"], b2)
    event = json.loads(b2)
    assert event["event"] == "job.succeeded" and event["job"]["id"] == job.id
    time.sleep(1.0)
    assert len(Hook.calls) == 2  # delivered: not called again
    call = job.refresh().webhook  # and its owner sees so
    assert call is not None and (call.state.value, call.attempts) == ("delivered", 2)

    server.shutdown()
    server.server_close()  # the receiver is down
    Hook.calls = []
    second = client.submit("echo", {"tasks": 1, "data": "hi"}, webhook_url=url)
    assert second.wait(timeout=60).state is JobState.SUCCEEDED
    time.sleep(1.0)  # its first call fails: connection refused
    assert cluster.coordinator is not None
    cluster.kill(cluster.coordinator)
    server = serve_hook(port)
    try:
        cluster.start_coordinator("--webhook-allow-private")
        wait_for(lambda: len(Hook.calls) >= 1, timeout=30, what="the call after a restart")
        headers, body, status = Hook.calls[0]
        assert status == 204 and json.loads(body)["job"]["id"] == second.id
        assert verify(secret, headers["X-Sparegrid-Signature"], body)
    finally:
        server.shutdown()
        server.server_close()


def test_webhook_to_a_private_address_is_refused_by_default(cluster) -> None:
    _, client = start(cluster, 0, credit=50)
    with pytest.raises(InvalidArgumentError) as caught:
        client.submit("echo", {"tasks": 1}, webhook_url="http://10.0.0.8/hook")
    assert caught.value.code == "BAD_WEBHOOK"
    assert "--webhook-allow-private" in caught.value.message
    assert client.list_jobs() == [] and client.account().balance == 50
