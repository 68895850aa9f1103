"""A live grid for the dashboard and metrics tests: a coordinator serving /metrics and the
dashboard, two workers (each a volunteer account's node) serving their own /metrics, and
two clients. One per test module: real processes take seconds to start."""

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from sparegrid.sdk import AdminClient, Client
from tests.e2e.conftest import Cluster
from tests.e2e.helpers import online_nodes, wait_for
from tests.render.conftest import scenes  # noqa: F401  (the render scenes, made once)

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"


@dataclass
class Site:
    cluster: Cluster
    web: str  # http://host:port of the dashboard
    metrics: str  # the coordinator's /metrics URL
    worker_metrics: list[str]
    admin_key: str
    alice_key: str
    bob_key: str
    volunteer_key: str  # owns node1
    _open: list[httpx.Client] = field(default_factory=list)

    def client(self, key: str) -> Client:
        return Client(self.cluster.address, api_key=key)

    def browser(self, key: str | None = None) -> httpx.Client:
        """An HTTP client of the dashboard, signed in with `key` when given."""
        http = httpx.Client(base_url=self.web, follow_redirects=False, timeout=30)
        self._open.append(http)  # closed after the test (closed_browsers)
        if key is not None:
            response = http.post("/login", data={"api_key": key})
            assert response.status_code == 303, response.text
        return http


def _addr(path: Path, proc_tail: str) -> str:
    deadline = time.monotonic() + 30
    while not path.exists() or not path.read_text().strip():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{path} was not written:\n{proc_tail}")
        time.sleep(0.05)
    return path.read_text().strip()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("site")
    env = dict(os.environ, XDG_CONFIG_HOME=str(root / "config"))
    env.pop("SPAREGRID_API_KEY", None)
    env.pop("SPAREGRID_ADMIN_KEY", None)
    cluster = Cluster(root, env)
    try:
        cluster.start_coordinator("--metrics-port", "0", "--web-port", "0")
        assert cluster.coordinator is not None
        coord = root / "coord"
        web = _addr(coord / "web.addr", cluster.coordinator.tail())
        metrics = _addr(coord / "metrics.addr", cluster.coordinator.tail())
        for name, owner in (("node1", "volunteer"), ("node2", "volunteer2")):
            cluster.start_worker(name, "--metrics-port", "0", "--prefetch", "1", owner=owner)
        workers = [
            _addr(root / name / "metrics.addr", cluster.workers[name].tail())
            for name in ("node1", "node2")
        ]
        admin = AdminClient(cluster.address, api_key=cluster.admin_key)
        _, alice = admin.create_account("alice", credit=10**9)
        _, bob = admin.create_account("bob", credit=10**9)
        wait_for(lambda: online_nodes(admin) == 2, what="2 workers online")
        admin.close()
        yield Site(
            cluster,
            f"http://{web}",
            f"http://{metrics}/metrics",
            [f"http://{w}/metrics" for w in workers],
            cluster.admin_key,
            alice,
            bob,
            cluster.owner_key("volunteer"),
        )
    finally:
        cluster.stop_all()


@pytest.fixture(autouse=True)
def closed_browsers(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "site" in request.fixturenames:
        site: Site = request.getfixturevalue("site")
        while site._open:
            site._open.pop().close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    """Keeps the test's outcome on it, for the browser fixture's screenshot on failure."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
