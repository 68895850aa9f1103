"""A worker's /metrics, over real HTTP: a web page in the volunteer's browser whose name is
rebound to 127.0.0.1 (DNS rebinding) sends its own name as Host and is refused; an IP
address, localhost and the names given with --metrics-host are served."""

import argparse
import asyncio
import contextlib
from pathlib import Path

import httpx
import pytest

from sparegrid.worker.cli import register
from sparegrid.worker.config import ConfigError
from sparegrid.worker.daemon import Worker
from sparegrid.worker.settings import layered
from sparegrid.worker.testing.coordinator import FakeCoordinator
from sparegrid.worker.testing.harness import fake_devices, make_config

pytestmark = pytest.mark.timeout(60)


def parse(*flags: str) -> argparse.Namespace:
    root = argparse.ArgumentParser(prog="sparegrid")
    register(root.add_subparsers(dest="command", required=True))
    return root.parse_args(["worker", "run", *flags])


async def test_metrics_refuse_a_host_another_site_could_rebind(
    tmp_path: Path, coordinator: FakeCoordinator
) -> None:
    settings = make_config(
        tmp_path / "node",
        coordinator.address,
        metrics_port=0,
        metrics_hosts=("gpu1.example.org",),
    )
    worker = Worker(settings, devices=fake_devices())
    running = asyncio.create_task(worker.run())
    try:
        await coordinator.session()
        addr = settings.data_dir / "metrics.addr"
        while not addr.exists():
            await asyncio.sleep(0.02)
        port = addr.read_text().strip().rsplit(":", 1)[1]
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            refused = await http.get("/metrics", headers={"host": f"rebound.example:{port}"})
            assert refused.status_code == 403
            assert "sparegrid_" not in refused.text
            assert f"'rebound.example:{port}'" in refused.text
            assert "--metrics-host rebound.example" in refused.text
            for host in [f"127.0.0.1:{port}", f"localhost:{port}", "[::1]", "gpu1.example.org."]:
                served = await http.get("/metrics", headers={"host": host})
                assert served.status_code == 200, host
                assert served.headers["content-type"].startswith("text/plain")
                assert "sparegrid_worker_device_state" in served.text
            assert (await http.get("/")).status_code == 404
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running


def test_metrics_host_from_flags_environment_and_file(tmp_path: Path) -> None:
    toml = tmp_path / "worker.toml"
    toml.write_text('metrics_host = ["Prom.Internal."]\n')
    env = {"SPAREGRID_WORKER_METRICS_HOSTS": "a.example, b.example"}
    assert layered(parse("--config", str(toml)), {}).metrics_hosts == ("prom.internal",)
    assert layered(parse("--config", str(toml)), env).metrics_hosts == ("a.example", "b.example")
    flags = parse("--metrics-host", "x.example", "--metrics-host", "Y.example")
    assert layered(flags, env).metrics_hosts == ("x.example", "y.example")
    with pytest.raises(ConfigError) as bad:
        layered(parse("--metrics-host", "a b/c"), {})
    assert "'a b/c', not a host name" in str(bad.value) and "--metrics-host" in str(bad.value)
