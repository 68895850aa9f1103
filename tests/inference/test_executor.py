"""The inference executor, run in this process on the CPU: results, precision, failures."""

import json
import operator
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load, save_file

from sparegrid.worker.executors.base import DeviceRef, ExecTask, ExecutorError
from sparegrid.worker.executors.inference import InferenceExecutor
from sparegrid.worker.executors.inference.loader import load_program, make_portable
from tests.inference.models import Flatten, Log, TwoHeads, export

CPU = DeviceRef(0, "cpu", "cpu")


def task(tmp_path: Path, model: Path, inputs: dict[str, torch.Tensor], **params: Any) -> ExecTask:
    shard = tmp_path / f"shard-{len(list(tmp_path.glob('shard-*')))}.safetensors"
    save_file(inputs, str(shard))
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    body = {"batch_size": 4, "precision": "fp32", "shard": 0, "samples": 1} | params
    return ExecTask(json.dumps(body).encode(), {"model": model, "shard_000000": shard}, work, CPU)


def outputs(result: list[Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    files = {o.name: o.data for o in result}
    return load(files["outputs.safetensors"]), json.loads(files["meta.json"])


def test_outputs_match_the_model_run_locally(encoder, encoder_pt2: Path, tmp_path: Path) -> None:
    x = torch.randn(10, 3, 16, 16)
    tensors, meta = outputs(InferenceExecutor().run(task(tmp_path, encoder_pt2, {"x": x})))
    with torch.inference_mode():
        expected = encoder(x)
    torch.testing.assert_close(tensors["output_0"], expected, rtol=1e-5, atol=1e-5)
    assert meta["precision"] == "fp32" and meta["samples"] == 10 and meta["nonfinite"] == {}


def test_bf16_runs_in_bf16_within_tolerance(encoder, encoder_pt2: Path, tmp_path: Path) -> None:
    x = torch.randn(8, 3, 16, 16)
    run = task(tmp_path, encoder_pt2, {"x": x}, precision="bf16")
    tensors, meta = outputs(InferenceExecutor().run(run))
    assert tensors["output_0"].dtype == torch.bfloat16 and meta["precision"] == "bf16"
    with torch.inference_mode():
        expected = encoder(x)
    torch.testing.assert_close(tensors["output_0"].float(), expected, rtol=0.05, atol=0.05)


def test_the_model_is_loaded_once_and_kept(encoder_pt2: Path, tmp_path: Path) -> None:
    executor = InferenceExecutor()
    first = outputs(executor.run(task(tmp_path, encoder_pt2, {"x": torch.randn(4, 3, 16, 16)})))
    second = outputs(executor.run(task(tmp_path, encoder_pt2, {"x": torch.randn(4, 3, 16, 16)})))
    assert len(executor.models) == 1
    assert second[1]["timing"]["load_ms"] < first[1]["timing"]["load_ms"]


def test_the_cache_evicts_the_least_recently_used_program(
    encoder_pt2: Path, tmp_path: Path
) -> None:
    flatten = export(Flatten(), (torch.randn(4, 3, 8),), tmp_path / "flatten.pt2")
    executor = InferenceExecutor()
    executor.run(task(tmp_path, encoder_pt2, {"x": torch.randn(2, 3, 16, 16)}))
    executor.models.max_bytes = executor.models.used()  # room for the encoder alone
    executor.run(task(tmp_path, flatten, {"x": torch.randn(2, 3, 8)}))  # no weights: fits
    assert len(executor.models) == 2
    executor.run(task(tmp_path, encoder_pt2, {"x": torch.randn(2, 3, 16, 16)}, precision="bf16"))
    keys = [k[1] for k in executor.models._entries]
    assert keys == ["cpu/fp32", "cpu/bf16"], "the fp32 encoder was used least recently"


def test_the_next_shard_is_staged_while_this_one_runs(encoder_pt2: Path, tmp_path: Path) -> None:
    executor = InferenceExecutor()
    first = task(tmp_path, encoder_pt2, {"x": torch.randn(4, 3, 16, 16)})
    second = task(tmp_path, encoder_pt2, {"x": torch.randn(4, 3, 16, 16)})
    executor.prepare(second)
    assert outputs(executor.run(first))[1]["timing"]["staged"] is False
    assert outputs(executor.run(second))[1]["timing"]["staged"] is True


def test_several_inputs_and_dict_outputs(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = TwoHeads().eval()
    x, y = torch.randn(6, 8), torch.randn(6, 8)
    program = export(model, (x[:2], y[:2]), tmp_path / "two.pt2")
    tensors, meta = outputs(InferenceExecutor().run(task(tmp_path, program, {"x": x, "y": y})))
    from torch.utils import _pytree as pytree

    rebuilt = pytree.tree_unflatten(
        [tensors[n] for n in meta["outputs"]], pytree.treespec_loads(meta["treespec"])
    )
    with torch.inference_mode():
        expected = model(x, y)
    assert set(rebuilt) == {"sum", "diff"}
    torch.testing.assert_close(rebuilt["sum"], expected["sum"])
    torch.testing.assert_close(rebuilt["diff"], expected["diff"])


def test_nan_and_inf_outputs_are_flagged(tmp_path: Path) -> None:
    program = export(Log(), (torch.rand(4, 3) + 1,), tmp_path / "log.pt2")
    x = torch.tensor([[1.0, 0.0, -1.0], [2.0, 3.0, 4.0]])  # log(0) = -inf, log(-1) = nan
    _, meta = outputs(InferenceExecutor().run(task(tmp_path, program, {"x": x})))
    assert meta["nonfinite"] == {"output_0": 2}


class OutOfMemoryAbove(InferenceExecutor):
    """Behaves as a device that holds at most `limit` samples at once."""

    limit = 3

    def forward(self, module: Any, batch: list[torch.Tensor]) -> Any:
        if batch[0].shape[0] > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return super().forward(module, batch)


def test_out_of_memory_halves_the_batch_and_still_answers(
    encoder, encoder_pt2: Path, tmp_path: Path
) -> None:
    x = torch.randn(10, 3, 16, 16)
    tensors, meta = outputs(
        OutOfMemoryAbove().run(task(tmp_path, encoder_pt2, {"x": x}, batch_size=8))
    )
    assert meta["batch_size"] == 2
    with torch.inference_mode():
        torch.testing.assert_close(tensors["output_0"], encoder(x), rtol=1e-5, atol=1e-5)


def test_out_of_memory_at_batch_one_fails_the_task_retryably(
    encoder_pt2: Path, tmp_path: Path
) -> None:
    executor = OutOfMemoryAbove()
    executor.limit = 0
    with pytest.raises(ExecutorError) as caught:
        executor.run(task(tmp_path, encoder_pt2, {"x": torch.randn(2, 3, 16, 16)}))
    assert caught.value.code == "CUDA_OOM" and caught.value.retryable
    assert "out of memory on cpu" in caught.value.message


def test_a_layout_assumption_from_tracing_no_longer_breaks(tmp_path: Path) -> None:
    """The class of the CPU-exported-runs-on-CUDA failure, reproduced on the CPU: a view
    recorded for the traced strides meets other strides at run time."""
    program = export(Flatten(), (torch.randn(4, 3, 8),), tmp_path / "flatten.pt2")
    other_strides = torch.randn(5, 8, 3).transpose(1, 2)
    plain = torch.export.load(program).module()
    with pytest.raises(RuntimeError, match="view size is not compatible"):
        plain(other_strides)
    portable, _ = load_program(program, torch.device("cpu"), tmp_path)
    torch.testing.assert_close(portable(other_strides), (other_strides * 2).reshape(5, -1))


@pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning")  # inside run_decompositions
def test_a_decomposed_program_is_made_portable(encoder) -> None:
    program = torch.export.export(encoder, (torch.randn(2, 3, 16, 16),)).run_decompositions()
    module = program.module()
    assert make_portable(module.graph) > 10
    module.recompile()
    assert "aten.view.default" not in [str(n.target) for n in module.graph.nodes]
    x = torch.randn(2, 3, 16, 16)
    with torch.inference_mode():
        torch.testing.assert_close(module(x), encoder(x), rtol=1e-5, atol=1e-5)


def test_cpu_only_attention_kernels_are_made_portable() -> None:
    """Older torch decomposes attention into a CPU-only kernel that CUDA lacks."""
    graph = torch.fx.Graph()
    q, k, v = (graph.placeholder(n) for n in "qkv")
    cpu_kernel = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default
    attention = graph.call_function(cpu_kernel, (q, k, v, 0.0, True), {"scale": 0.5})
    graph.output(graph.call_function(operator.getitem, (attention, 0)))
    module = torch.fx.GraphModule(torch.nn.Module(), graph)
    q_, k_, v_ = (torch.randn(2, 4, 6, 8) for _ in range(3))
    expected = module(q_, k_, v_)
    assert make_portable(module.graph) == 1
    module.recompile()
    assert [n.target for n in module.graph.nodes if n.op == "call_function"] == [
        torch.ops.aten.scaled_dot_product_attention.default
    ]
    torch.testing.assert_close(module(q_, k_, v_), expected)


def test_allocations_are_zeroed_so_no_task_reads_what_another_left() -> None:
    graph = torch.fx.Graph()
    x = graph.placeholder("x")
    a = graph.call_function(torch.ops.aten.empty.memory_format, ([2, 3],), {"memory_format": None})
    b = graph.call_function(torch.ops.aten.empty_like.default, (x,))
    c = graph.call_function(torch.ops.aten.new_empty.default, (x, [2, 3]))
    graph.output((a, b, c))
    module = torch.fx.GraphModule(torch.nn.Module(), graph)
    assert make_portable(module.graph) == 3
    module.recompile()
    for out in module(torch.randn(2, 3)):
        assert torch.equal(out, torch.zeros(2, 3))


def test_bad_params_and_inputs_are_refused(encoder_pt2: Path, tmp_path: Path) -> None:
    executor = InferenceExecutor()
    with pytest.raises(ExecutorError, match="precision"):
        executor.run(task(tmp_path, encoder_pt2, {"x": torch.randn(2, 3, 16, 16)}, precision="fp8"))
    with pytest.raises(ExecutorError, match="the program takes"):
        executor.run(task(tmp_path, encoder_pt2, {"y": torch.randn(2, 3, 16, 16)}))


def test_compile_is_applied_once_per_program_and_recorded(
    encoder_pt2: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Inductor itself is exercised in the GPU set (it takes minutes on two CPU cores)."""
    calls = []

    def fake_compile(module: Any, mode: str) -> Any:
        calls.append(mode)
        return module

    monkeypatch.setattr(torch, "compile", fake_compile)
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    executor = InferenceExecutor()
    for _ in range(2):
        run = task(tmp_path, encoder_pt2, {"x": torch.randn(2, 3, 16, 16)}, compile=True)
        _, meta = outputs(executor.run(run))
    assert calls == ["default"] and meta["compiled"] is True
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "inductor")
