"""Inference inputs from files (a folder of safetensors files, a Parquet table) and the
refusals a user meets, through real coordinator and worker processes: the SDK, and the
CLI in its own words."""

import subprocess
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file, save, save_file

from sparegrid.sdk import InvalidArgumentError
from tests.e2e.helpers import client_env, run_cli, setup
from tests.inference.models import TwoHeads

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

HINT = 'torch.export.save(torch.export.export(model, (example,)), "model.pt2")'


def export(model: torch.nn.Module, path: Path, batch: torch.export.Dim | None) -> Path:
    example = (torch.randn(4, 8), torch.randn(4, 8))
    shapes = ({0: batch}, {0: batch}) if batch is not None else None
    torch.export.save(torch.export.export(model, example, dynamic_shapes=shapes), path)
    return path


def test_a_folder_and_a_parquet_table_run_on_a_worker(cluster, tmp_path: Path) -> None:
    admin, client = setup(cluster, workers=1)
    torch.manual_seed(0)
    model = TwoHeads().eval()
    program = export(model, tmp_path / "two.pt2", torch.export.Dim("batch", min=1, max=64))
    folder = tmp_path / "inputs"
    folder.mkdir()
    parts = {}
    for name, count in (("part_2", 5), ("part_1", 6), ("part_3", 3)):
        parts[name] = {"x": torch.randn(count, 8), "y": torch.randn(count, 8)}
        save_file(parts[name], str(folder / f"{name}.safetensors"))
    x = torch.cat([parts[p]["x"] for p in sorted(parts)])
    y = torch.cat([parts[p]["y"] for p in sorted(parts)])
    with torch.inference_mode():
        want = model(x, y)

    job = client.infer(program, folder, batch_size=4, shard_batches=2)  # 14 samples: 2 shards
    got = job.result(timeout=120)
    assert job.job.counts.total == 2
    for key in ("sum", "diff"):
        torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-5)

    table = tmp_path / "inputs.parquet"
    columns = {
        name: pa.FixedSizeListArray.from_arrays(pa.array(t.numpy().reshape(-1)), 8)
        for name, t in (("x", x), ("y", y))
    }
    pq.write_table(pa.table(columns), table, row_group_size=4)
    got = client.infer(model, table, batch_size=4).result(timeout=120)  # exported here
    for key in ("sum", "diff"):
        torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-5)
    assert client.get_job(job.id).verify().passed
    assert admin.ledger_check().balanced


def test_bad_files_and_a_state_dict_submit_nothing(cluster, tmp_path: Path) -> None:
    admin, client = setup(cluster, workers=0)
    program = export(TwoHeads(), tmp_path / "two.pt2", torch.export.Dim("batch", max=64))
    folder = tmp_path / "inputs"
    folder.mkdir()
    save_file({"x": torch.randn(4, 8), "y": torch.randn(4, 8)}, str(folder / "a.safetensors"))
    save_file({"x": torch.randn(4, 8), "z": torch.randn(4, 8)}, str(folder / "b.safetensors"))
    with pytest.raises(InvalidArgumentError) as caught:
        client.infer(program, folder, batch_size=4)
    assert caught.value.code == "BAD_INPUTS" and str(folder / "b.safetensors") in str(caught.value)

    table = tmp_path / "t.parquet"
    pq.write_table(pa.table({"x": pa.array(["a"]), "y": pa.array([1.0])}), table)
    with pytest.raises(InvalidArgumentError) as caught:
        client.infer(program, table, batch_size=4)
    assert "column 'x' is string, not a tensor" in caught.value.message

    weights = tmp_path / "weights.pt"
    torch.save(TwoHeads().state_dict(), weights)
    inputs = {"x": torch.randn(4, 8), "y": torch.randn(4, 8)}
    with pytest.raises(InvalidArgumentError) as caught:
        client.infer(weights, inputs, batch_size=4)
    assert caught.value.code == "MODEL_NOT_EXPORTED" and caught.value.message.endswith(HINT)

    # Straight to the coordinator, past the SDK's check: it refuses it the same way.
    shard = client.upload(save(inputs))
    with pytest.raises(InvalidArgumentError) as caught:
        client.submit(
            "inference",
            {"batch_size": 4},
            {"model": client.upload(weights), "shard_000000": shard},
        )
    assert caught.value.code == "MODEL_NOT_EXPORTED"
    assert "input 'model': the model is a torch.save file" in caught.value.message
    assert caught.value.message.endswith(HINT)
    assert client.list_jobs() == [] and client.account().balance == 1000
    assert admin.ledger_check().balanced


def test_the_cli_takes_a_folder_and_speaks_in_flags(cluster, tmp_path: Path) -> None:
    _, client = setup(cluster, workers=1)
    env = client_env(cluster, client.connection.api_key)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return run_cli(env, *args)

    torch.manual_seed(0)
    model = TwoHeads().eval()
    program = export(model, tmp_path / "two.pt2", torch.export.Dim("batch", max=64))
    folder = tmp_path / "inputs"
    folder.mkdir()
    x, y = torch.randn(10, 8), torch.randn(10, 8)
    save_file({"x": x[:6], "y": y[:6]}, str(folder / "a.safetensors"))
    save_file({"x": x[6:], "y": y[6:]}, str(folder / "b.safetensors"))
    submit = ("job", "submit", "inference", "--model", str(program), "--inputs", str(folder))
    done = cli(*submit, "--batch-size", "4", "--wait")
    assert done.returncode == 0, done.stderr
    fetched = cli("job", "results", done.stdout.strip(), "-o", str(tmp_path / "out"))
    assert fetched.returncode == 0, fetched.stderr
    merged = load_file(str(tmp_path / "out" / "outputs.safetensors"))
    with torch.inference_mode():
        want = model(x, y)
    for i, key in enumerate(("sum", "diff")):  # the program's outputs, in its order
        torch.testing.assert_close(merged[f"output_{i}"], want[key], rtol=1e-5, atol=1e-5)

    fixed = export(model, tmp_path / "fixed.pt2", None)  # batches of exactly 4
    refused = {
        "--batch-size 4": cli(
            "job",
            "submit",
            "inference",
            "--model",
            str(fixed),
            "--inputs",
            str(folder),
            "--batch-size",
            "3",
        ),
        "--replicas must be 0 (adaptive) or 2 to": cli(
            "job", "submit", "echo", "--data", "hi", "--replicas", "1", "--quorum", "1"
        ),
        "--max-attempts must be 0 (default) to": cli(
            "job", "submit", "echo", "--data", "hi", "--max-attempts", "1000"
        ),
        "--priority must be -100 to 100, got 500": cli(
            "job", "submit", "echo", "--data", "hi", "--priority", "500"
        ),
    }
    for said, result in refused.items():
        assert result.returncode == 1, result.stderr
        assert said in result.stderr, result.stderr
        for name in ("batch_size", "replicas must", "max_attempts", "priority must"):
            assert f" {name}" not in result.stderr
    weights = tmp_path / "weights.pt"
    torch.save(model, weights)
    refused_model = cli(*submit[:4], str(weights), "--inputs", str(folder))
    assert refused_model.returncode == 1
    assert (
        "[MODEL_NOT_EXPORTED]" in refused_model.stderr
        and "torch.export.save(" in refused_model.stderr
    )
    assert len(client.list_jobs()) == 1  # only the one that ran
