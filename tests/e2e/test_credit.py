"""After real jobs on real workers, `worker status`, `worker credit` and `admin nodes` print
the same credit for each node: the coordinator's ledger, also for results paid in another
node's batch (a check of a held result, a second replica agreeing later)."""

import json
import re
import subprocess
import sys

import pytest

from tests.e2e.helpers import setup, wait_for

pytestmark = pytest.mark.e2e

LEDGER = re.compile(r"^credit: (\d+) in the coordinator's ledger", re.MULTILINE)


def cli(cluster, *args: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "sparegrid.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**cluster.env, **(env or {})},
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def shown_by_status(cluster, name: str) -> int:
    out = cli(cluster, "worker", "status", "--data-dir", str(cluster.root / name))
    [figure] = LEDGER.findall(out)
    return int(figure)


def shown_by_credit(cluster, name: str) -> int:
    key = {"SPAREGRID_OWNER_KEY": cluster.owner_keys[f"owner-{name}"]}
    args = ("--data-dir", str(cluster.root / name), "--coordinator", cluster.address)
    [figure] = LEDGER.findall(cli(cluster, "worker", "credit", *args, env=key))
    return int(figure)


def test_three_commands_print_the_ledgers_credit(cluster) -> None:
    admin, client = setup(cluster, workers=2, credit=10_000)
    for job in (client.echo("a", tasks=12), client.echo("b", tasks=12, sleep_ms=50)):
        assert job.wait(timeout=120).state == "succeeded"
    env = {"SPAREGRID_ADMIN_KEY": cluster.admin_key}
    listed = json.loads(
        cli(cluster, "admin", "nodes", "--json", "--coordinator", cluster.address, env=env)
    )
    by_name = {n["name"]: int(n["credit"]) for n in listed}
    assert set(by_name) == {"node1", "node2"} and sum(by_name.values()) > 0
    ledger = {
        n.name: admin.ledger_entries(account=f"node:{n.node_id}", limit=10_000)
        for n in admin.nodes()
    }
    for name, credit in by_name.items():
        assert credit == sum(e.amount for e in ledger[name])  # admin nodes is the ledger
        assert shown_by_credit(cluster, name) == credit
        # the worker hears of a payment made in another node's batch right after its commit
        wait_for(lambda n=name, c=credit: shown_by_status(cluster, n) == c, timeout=10,
                 what=f"worker status of {name} to show {credit}")  # fmt: skip
