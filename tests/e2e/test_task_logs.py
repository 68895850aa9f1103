"""`sparegrid job logs` through real coordinator and worker processes: a failing inference
task's traceback comes back signed with the worker's paths redacted, to its owner only."""

import json
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import sparegrid.worker
from sparegrid.sdk import JobState
from sparegrid.sdk.inference import job_params
from tests.e2e.conftest import Cluster
from tests.e2e.helpers import client_env, online_nodes, run_cli, setup, wait_for

pytestmark = pytest.mark.e2e


class Lookup(torch.nn.Module):
    """An embedding: an index past its table fails at run time, not at submit."""

    def __init__(self) -> None:
        super().__init__()
        self.table = torch.nn.Embedding(10, 4)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.table(ids).sum(dim=1)


def cli(cluster: Cluster, key: str, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(client_env(cluster, key), *args)


def test_a_failing_inference_tasks_traceback_reaches_job_logs_redacted(
    cluster: Cluster, tmp_path: Path
) -> None:
    admin, client = setup(cluster, workers=0)
    # a home that holds the code the worker runs, as a volunteer's home holds their venv:
    # the folder above the import root of sparegrid.worker (the sandbox still reads it)
    home = Path(sparegrid.worker.__file__).parents[3]
    cluster.start_worker("node1", env={"HOME": str(home)})
    wait_for(lambda: online_nodes(admin) == 1, what="the worker online")
    batch = torch.export.Dim("batch", min=1, max=64)
    program = tmp_path / "lookup.pt2"
    ids = torch.zeros(4, 3, dtype=torch.int64)
    torch.export.save(
        torch.export.export(Lookup().eval(), (ids,), dynamic_shapes=({0: batch},)), program
    )
    save_file({"ids": torch.full((4, 3), 1000, dtype=torch.int64)}, str(tmp_path / "s.st"))
    inputs = {"model": client.upload(program), "shard_000000": client.upload(tmp_path / "s.st")}
    params = job_params(4, "fp32", False, False)
    job = client.submit("inference", params, inputs, max_attempts=1).wait(timeout=120)
    assert job.state == JobState.FAILED
    key = client.connection.api_key

    shown = cli(cluster, key, "job", "logs", job.id)
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout
    assert "task 0, attempt" in out and "EXECUTOR_ERROR (signed)" in out
    assert "Traceback (most recent call last)" in out and "IndexError: index out of range" in out
    assert 'File "<home>/' in out and "sparegrid/worker/slots/child/main.py" in out  # redacted
    assert str(home) not in out and str(cluster.root) not in out
    [log] = json.loads(cli(cluster, key, "job", "logs", job.id, "--task", "0", "--json").stdout)
    assert log["verified"] and log["outcome"] == "EXECUTOR_ERROR" and log["node_id"]

    # another account sees no such job
    _, other = admin.create_account("mallory", credit=10)
    refused = cli(cluster, other, "job", "logs", job.id)
    assert refused.returncode != 0 and "JOB_NOT_FOUND" in refused.stderr
    assert "IndexError" not in refused.stdout + refused.stderr
    bad = cli(cluster, key, "job", "logs", job.id, "--task", "5")
    assert bad.returncode != 0 and "BAD_TASK" in bad.stderr and "tasks 0 to 0" in bad.stderr

    # a successful task has no log unless the job asks
    for flags, count in (((), 0), (("--keep-logs",), 1)):
        submitted = cli(cluster, key, "job", "submit", "echo", "--data", "hi", "--wait", *flags)
        assert submitted.returncode == 0, submitted.stderr
        job_id = submitted.stdout.split()[0]
        listed = json.loads(cli(cluster, key, "job", "logs", job_id, "--json").stdout)
        assert [entry["outcome"] for entry in listed] == ["succeeded"] * count
