"""Inference through real coordinator and worker processes, driven through the SDK."""

import asyncio
import json
from pathlib import Path

import pytest
import torch

from sparegrid.sdk import AsyncClient, InvalidArgumentError
from tests.e2e.helpers import client_env, run_cli, setup
from tests.inference.models import Encoder, read, rewrite

pytestmark = pytest.mark.e2e


def test_a_model_runs_on_two_workers_and_comes_back_in_order(cluster) -> None:
    admin, client = setup(cluster, workers=2)
    torch.manual_seed(0)
    model = Encoder().eval()
    x = torch.randn(40, 3, 16, 16)
    # 5 shards of 2 batches; the job options a submit takes reach the job
    job = client.infer(model, x, batch_size=4, shard_batches=2, priority=7, max_attempts=2)
    assert client.get_job(job.job.id).snapshot.priority == 7
    streamed = list(job.stream(timeout=120))
    with torch.inference_mode():
        expected = model(x)
    assert len(streamed) == 10 and all(out.shape == (4, 10) for out in streamed)
    torch.testing.assert_close(torch.cat(streamed), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(job.result(), expected, rtol=1e-5, atol=1e-5)
    report = job.verify()
    assert report.passed and report.ok == 5
    assert job.nonfinite == {}
    assert admin.ledger_check().balanced

    async def the_same_with_asyncio() -> list[torch.Tensor]:
        async with AsyncClient(cluster.address, api_key=client.connection.api_key) as aclient:
            ajob = await aclient.infer(model, x, batch_size=8, precision="fp32")
            outs = [out async for out in ajob.stream(timeout=120)]
            assert (await ajob.verify()).passed
            return outs

    outs = asyncio.run(the_same_with_asyncio())
    assert len(outs) == 5
    torch.testing.assert_close(torch.cat(outs), expected, rtol=1e-5, atol=1e-5)


def test_bad_inference_submits_are_refused_and_change_nothing(cluster, tmp_path: Path) -> None:
    admin, client = setup(cluster, workers=0)
    model = Encoder().eval()
    with pytest.raises(InvalidArgumentError) as caught:
        client.infer(model, torch.randn(8, 3, 12, 12), batch_size=4)  # does not fit the model
    assert caught.value.code == "EXPORT_FAILED"
    program = tmp_path / "enc.pt2"
    torch.export.save(
        torch.export.export(
            model,
            (torch.randn(4, 3, 16, 16),),
            dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=64)},),
        ),
        program,
    )
    with pytest.raises(InvalidArgumentError) as caught:
        client.infer(program, torch.randn(8, 3, 16, 16, dtype=torch.float64), batch_size=4)
    assert caught.value.code == "BAD_INPUTS"
    assert "x: F32[" in caught.value.message and "x: F64[8, 3, 16, 16]" in caught.value.message

    # Straight to the coordinator, past the SDK's own checks: it applies the same rules.
    from safetensors.torch import save

    shard = client.upload(save({"x": torch.randn(8, 3, 16, 15)}))
    model_digest = client.upload(program)
    with pytest.raises(InvalidArgumentError) as caught:
        client.submit(
            "inference", {"batch_size": 4}, {"model": model_digest, "shard_000000": shard}
        )
    assert caught.value.code == "BAD_INPUTS" and "dimension 3 is 15" in caught.value.message

    spec = json.loads(read(program, "models/model.json"))
    spec["guards_code"] = ["__import__('os').system('touch /tmp/pwned')"]
    evil = rewrite(
        program, tmp_path / "evil.pt2", {"models/model.json": json.dumps(spec).encode()}, {}
    )
    good_shard = client.upload(save({"x": torch.randn(8, 3, 16, 16)}))
    with pytest.raises(InvalidArgumentError) as caught:
        client.submit(
            "inference",
            {"batch_size": 4},
            {"model": client.upload(evil), "shard_000000": good_shard},
        )
    assert caught.value.code == "UNSAFE_MODEL" and "models/model.json" in caught.value.message
    assert client.list_jobs() == [] and client.account().balance == 1000
    assert admin.ledger_check().balanced


@pytest.mark.timeout(180)  # three CLI processes, each importing torch
def test_the_cli_submits_a_saved_program_and_writes_merged_outputs(cluster, tmp_path: Path) -> None:
    import subprocess

    from safetensors.torch import load_file, save_file

    _, client = setup(cluster, workers=1)
    torch.manual_seed(0)
    model = Encoder().eval()
    program = tmp_path / "enc.pt2"
    batch = torch.export.Dim("batch", min=1, max=64)
    torch.export.save(
        torch.export.export(model, (torch.randn(4, 3, 16, 16),), dynamic_shapes=({0: batch},)),
        program,
    )
    x = torch.randn(10, 3, 16, 16)
    save_file({"x": x}, str(tmp_path / "x.safetensors"))
    env = client_env(cluster, client.connection.api_key)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return run_cli(env, *args)

    submitted = cli(
        "job",
        "submit",
        "inference",
        "--model",
        str(program),
        "--inputs",
        str(tmp_path / "x.safetensors"),
        "--batch-size",
        "4",
        "--wait",
    )
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    fetched = cli("job", "results", job_id, "-o", str(tmp_path / "out"))
    assert fetched.returncode == 0, fetched.stderr
    merged = load_file(str(tmp_path / "out" / "outputs.safetensors"))
    with torch.inference_mode():
        torch.testing.assert_close(merged["output_0"], model(x), rtol=1e-5, atol=1e-5)
    index = json.loads((tmp_path / "out" / "results.json").read_text())
    assert index["merged"] == "outputs.safetensors" and all(r["verified"] for r in index["results"])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU with CUDA")
def test_the_worker_pipeline_on_a_gpu(cluster) -> None:
    """A CPU-exported encoder, bf16 on the worker's GPU, against the CPU reference."""
    _, client = setup(cluster, workers=1)
    torch.manual_seed(0)
    model = Encoder(dim=384, depth=4, heads=6, image=224, patch=16).eval()
    x = torch.randn(256, 3, 224, 224)
    job = client.infer(model, x, batch_size=64, precision="bf16", device="cuda", shard_batches=1)
    got = job.result(timeout=300)
    with torch.inference_mode():
        want = model(x)
    error = float((got.float() - want).abs().max() / want.abs().max())
    print(f"worker pipeline bf16 on GPU: max relative error {error:.2e}")
    assert got.dtype == torch.bfloat16 and error < 5e-2
    assert job.verify().passed


def test_the_readme_inference_example_runs(cluster, monkeypatch, capsys) -> None:
    from tests.cli.readme import blocks

    _, client = setup(cluster, workers=1)
    monkeypatch.setenv("SPAREGRID_COORDINATOR", cluster.address)
    monkeypatch.setenv("SPAREGRID_API_KEY", client.connection.api_key)
    example = blocks("python")[2]
    exec(compile(example, "README.md inference example", "exec"), {"__name__": "__main__"})
    lines = capsys.readouterr().out.splitlines()
    assert lines[:2] == ["torch.Size([64, 4])", "torch.Size([64, 4])"]
    assert len(lines) == 16 and lines[-1] == "torch.Size([40, 4])"  # 1000 = 15 x 64 + 40
