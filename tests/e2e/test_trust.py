"""The trust layer with real processes: a coordinator process, and workers running the
real worker code (in this test's event loop) with dishonest executors plugged in."""

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sparegrid.sdk import AsyncAdminClient, AsyncClient
from sparegrid.worker.daemon import Worker
from sparegrid.worker.executors import ExecutorRegistry
from sparegrid.worker.testing.harness import fake_devices, make_config

pytestmark = pytest.mark.e2e

FAKE = "sparegrid.worker.executors.fake"
HONEST = ExecutorRegistry.builtin()


def dishonest(cls: str) -> ExecutorRegistry:
    return ExecutorRegistry().with_targets([f"{FAKE}:{cls}"])


@contextlib.asynccontextmanager
async def fleet(
    root: Path, address: str, members: list[tuple[str, str, ExecutorRegistry]]
) -> AsyncIterator[dict[str, Worker]]:
    workers: dict[str, Worker] = {}
    tasks = []
    for name, owner_key, registry in members:
        config = make_config(root / name, address, name=name, owner_key=owner_key)
        worker = Worker(config, devices=fake_devices(1), executors=registry)
        workers[name] = worker
        tasks.append(asyncio.create_task(worker.run()))
    try:
        yield workers
    finally:
        for worker in workers.values():
            worker.shutdown(force=True)
        async with asyncio.timeout(20):
            await asyncio.gather(*tasks, return_exceptions=True)


async def test_dishonest_nodes_earn_nothing_and_wrong_results_never_win(
    cluster, tmp_path: Path
) -> None:
    cluster.start_coordinator()
    async with AsyncAdminClient(cluster.address, api_key=cluster.admin_key) as admin:
        keys = {}
        for owner in ["o1", "o2", "o3", "mallory", "cartel", "alice"]:
            _, keys[owner] = await admin.create_account(owner, credit=10_000)
        members = [
            ("h1", keys["o1"], HONEST),
            ("h2", keys["o2"], HONEST),
            ("h3", keys["o3"], HONEST),
            ("wrong", keys["mallory"], dishonest("WrongEchoExecutor")),
            ("c1", keys["cartel"], dishonest("ColludingEchoExecutor")),
            ("c2", keys["cartel"], dishonest("ColludingEchoExecutor")),
        ]
        async with (
            fleet(tmp_path / "nodes", cluster.address, members) as workers,
            AsyncClient(cluster.address, api_key=keys["alice"]) as client,
        ):
            ids = {name: w.signer.node_id for name, w in workers.items()}
            job = await client.submit(
                "echo", {"tasks": 30, "data": "right"}, replicas=2, quorum=2, max_attempts=10
            )
            job = await job.wait(timeout=120)
            assert job.state == "succeeded", job.error
            results = await job.results()
            assert {r.output("out") for r in results} == {b"right"}
            report = await job.verify()
            assert report.passed and report.ok == 30
            assert {r.node_id for r in results} <= {ids["h1"], ids["h2"], ids["h3"]}
            nodes = {n.node_id: n for n in await admin.nodes()}
            bad = [nodes[ids[name]] for name in ("wrong", "c1", "c2")]
            assert all(n.credit == 0 for n in bad)
            paid = await admin.ledger_entries(job_id=job.id, limit=1000)
            assert sum(e.amount for e in paid if e.account.startswith("node:")) == 60
            assert job.cost_spent == 60  # known-answer tasks may pay nodes beyond this job
            for n in bad:
                assert n.standing == ("quarantined" if n.invalid >= 3 else "active")
            assert sum(n.invalid for n in bad) >= 1
            assert all(nodes[ids[h]].invalid == 0 for h in ("h1", "h2", "h3"))
            assert (await admin.ledger_check()).balanced
        async with AsyncClient(cluster.address, api_key=keys["o1"]) as owner:
            view = await owner.node_credit(ids["h1"])
            assert view.balance == nodes[ids["h1"]].credit
            # every credit names its job, task and why: this job's quorum, or a known-answer
            # task (a hidden re-run of a checked task, paid by the system account)
            assert all(e.job_id and e.task_id for e in view.entries)
            for e in view.entries:
                why = "quorum" if e.job_id == job.id else "known answer"
                assert f"validated result ({why}" in e.reason, e
