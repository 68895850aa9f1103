"""On a real NVIDIA GPU: detection, CPU-exported programs on CUDA, precisions, OOM, pipeline.

Skipped without CUDA. Run on a GPU machine with
    python -m pytest -m gpu tests/inference/test_gpu.py -v -s
and keep the output under bench/results/.
"""

import itertools
import json
from pathlib import Path

import pytest
import torch

from sparegrid.worker.executors.base import DeviceRef, ExecTask
from sparegrid.worker.executors.inference import InferenceExecutor
from sparegrid.worker.executors.inference.loader import load_program
from sparegrid.worker.node.devices import detect_devices
from tests.inference.models import Encoder, export

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU with CUDA"),
]
CUDA = DeviceRef(0, "cuda", "gpu")
# facts.md (H200, torch 2.11): GPU vs CPU fp32 ~1e-6, TF32 ~5e-4, bf16 ~1e-2 relative
TOLERANCE = {"fp32": 1e-4, "tf32": 5e-3, "bf16": 5e-2, "fp16": 2e-2}


@pytest.fixture(scope="module")
def vit(tmp_path_factory: pytest.TempPathFactory) -> tuple[Encoder, Path]:
    """A ViT-style encoder with nn.MultiheadAttention, exported on the CPU."""
    torch.manual_seed(0)
    model = Encoder(dim=384, depth=4, heads=6, image=224, patch=16).eval()
    path = tmp_path_factory.mktemp("gpu") / "vit.pt2"
    return model, export(model, (torch.randn(4, 3, 224, 224),), path)


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.float() - want).abs().max() / want.abs().max())


def test_nvml_finds_the_gpus() -> None:
    detection = detect_devices()
    print(detection.summary)
    cuda = [d for d in detection.devices if d.kind == "cuda"]
    assert len(cuda) == torch.cuda.device_count()
    assert all(d.memory_bytes > 0 and d.uuid for d in cuda)
    assert cuda[0].backend == "nvml"


def test_plain_move_to_cuda_of_a_cpu_export(vit: tuple[Encoder, Path]) -> None:
    """Records whether torch alone runs the CPU export on CUDA (it failed on torch 2.11)."""
    _, path = vit
    try:
        torch.export.load(path).module().to("cuda")(torch.randn(8, 3, 224, 224, device="cuda"))
        print("plain .module().to('cuda'): ran")
    except RuntimeError as exc:
        print(f"plain .module().to('cuda'): {exc}")


@pytest.mark.parametrize("precision", ["fp32", "tf32", "bf16", "fp16"])
def test_a_cpu_export_runs_on_cuda_within_tolerance(
    vit: tuple[Encoder, Path], tmp_path: Path, precision: str
) -> None:
    model, path = vit
    x = torch.randn(16, 3, 224, 224)
    with torch.inference_mode():
        want = model(x)
    shard = tmp_path / "shard.safetensors"
    from safetensors.torch import load, save_file

    save_file({"x": x}, str(shard))
    params = {"batch_size": 8, "precision": precision, "shard": 0, "samples": 16}
    task = ExecTask(
        json.dumps(params).encode(), {"model": path, "shard_000000": shard}, tmp_path, CUDA
    )
    files = {o.name: o.data for o in InferenceExecutor().run(task)}
    got = load(files["outputs.safetensors"])["output_0"]
    meta = json.loads(files["meta.json"])
    error = relative_error(got, want)
    print(f"{precision}: max relative error {error:.2e} on {meta['device']}, dtype {got.dtype}")
    assert meta["precision"] == precision and meta["nonfinite"] == {}
    assert error < TOLERANCE[precision]
    if precision == "bf16":
        assert got.dtype == torch.bfloat16


def test_a_compiled_program_matches_and_is_faster(
    vit: tuple[Encoder, Path], tmp_path: Path
) -> None:
    model, path = vit
    from safetensors.torch import load, save_file

    x = torch.randn(256, 3, 224, 224)
    save_file({"x": x}, str(tmp_path / "x.safetensors"))
    inputs = {"model": path, "shard_000000": tmp_path / "x.safetensors"}
    executor = InferenceExecutor()
    seconds = {}
    for compiled in (False, True, True):  # the second compiled run is warm
        params = {"batch_size": 64, "precision": "bf16", "compile": compiled, "samples": 256}
        files = {
            o.name: o.data
            for o in executor.run(ExecTask(json.dumps(params).encode(), inputs, tmp_path, CUDA))
        }
        meta = json.loads(files["meta.json"])
        seconds[compiled] = (meta["timing"]["end_ns"] - meta["timing"]["start_ns"]) / 1e9
    with torch.inference_mode():
        want = model(x)
    error = relative_error(load(files["outputs.safetensors"])["output_0"], want)
    print(
        f"bf16 256 samples: eager program {seconds[False]:.4f}s, compiled {seconds[True]:.4f}s, error {error:.2e}"
    )
    assert error < TOLERANCE["bf16"]


def test_reruns_on_one_gpu_are_bit_exact_in_deterministic_mode(
    vit: tuple[Encoder, Path], tmp_path: Path
) -> None:
    _, path = vit
    module, _ = load_program(path, torch.device("cuda"), tmp_path)
    torch.use_deterministic_algorithms(True)
    try:
        x = torch.randn(8, 3, 224, 224, device="cuda")
        with torch.inference_mode():
            assert torch.equal(module(x), module(x))
    finally:
        torch.use_deterministic_algorithms(False)


class Wide(torch.nn.Module):
    """Per sample, a 2**20-wide activation (4 MiB in fp32): a big batch exhausts any GPU."""

    def __init__(self) -> None:
        super().__init__()
        self.up = torch.nn.Linear(16, 1 << 20)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.up(x)).sum(dim=1)


def test_out_of_memory_halves_the_batch_and_the_daemon_lives(tmp_path: Path) -> None:
    total = torch.cuda.get_device_properties(0).total_memory
    batch = 1 << max(1, int(total * 2 // (4 << 20)).bit_length())  # needs > 2x the device
    path = export(Wide(), (torch.randn(4, 16),), tmp_path / "wide.pt2")
    from safetensors.torch import load, save_file

    x = torch.randn(batch, 16)
    save_file({"x": x}, str(tmp_path / "x.safetensors"))
    params = {"batch_size": batch, "precision": "fp32", "shard": 0, "samples": batch}
    inputs = {"model": path, "shard_000000": tmp_path / "x.safetensors"}
    executor = InferenceExecutor()
    files = {
        o.name: o.data
        for o in executor.run(ExecTask(json.dumps(params).encode(), inputs, tmp_path, CUDA))
    }
    meta = json.loads(files["meta.json"])
    print(f"asked for batches of {batch}, ran {meta['batch_size']}")
    assert meta["batch_size"] < batch
    assert load(files["outputs.safetensors"])["output_0"].shape == (batch,)
    # the executor (and the process it lives in) goes on to the next task
    small = {"batch_size": 4, "precision": "fp32", "shard": 0, "samples": batch}
    again = executor.run(ExecTask(json.dumps(small).encode(), inputs, tmp_path, CUDA))
    assert {o.name for o in again} == {"outputs.safetensors", "meta.json"}


def test_the_next_shard_is_staged_and_the_gap_is_small(
    vit: tuple[Encoder, Path], tmp_path: Path
) -> None:
    _, path = vit
    from safetensors.torch import save_file

    executor = InferenceExecutor()
    tasks = []
    for i in range(6):
        shard = tmp_path / f"s{i}.safetensors"
        save_file({"x": torch.randn(64, 3, 224, 224)}, str(shard))
        params = {"batch_size": 64, "precision": "bf16", "shard": i, "samples": 64}
        tasks.append(
            ExecTask(
                json.dumps(params).encode(), {"model": path, "shard_000000": shard}, tmp_path, CUDA
            )
        )
    timings = []
    for i, task in enumerate(tasks):
        if i + 1 < len(tasks):
            executor.prepare(tasks[i + 1])
        meta = json.loads({o.name: o.data for o in executor.run(task)}["meta.json"])
        timings.append(meta["timing"])
    gaps = [(b["start_ns"] - a["end_ns"]) / 1e6 for a, b in itertools.pairwise(timings[1:])]
    print(f"idle gaps between shards (ms): {[round(g, 2) for g in gaps]}")
    assert all(t["staged"] for t in timings[1:])
