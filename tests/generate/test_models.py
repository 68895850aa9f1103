"""Models as data: what is refused before anything runs, and each supported architecture
decoded by the worker's executor matches transformers' own generate token for token."""

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from tokenizers import Tokenizer

from sparegrid.wire.llm import (
    ARCHITECTURES,
    BadModel,
    Prompt,
    check_model,
    encode_prompts,
    model_files,
)
from sparegrid.worker.executors.base import DeviceRef, ExecTask, ExecutorError
from sparegrid.worker.executors.generate import GenerateExecutor
from tests.generate.models import CONFIGS, build, reference, train_tokenizer


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _edit_config(folder: Path, **changes: Any) -> None:
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


def test_every_supported_architecture_has_a_test_model() -> None:
    assert set(CONFIGS) == set(ARCHITECTURES)


def test_unknown_architecture_is_refused_with_the_list(llama: Path, tmp_path: Path) -> None:
    folder = _copy(llama, tmp_path / "m")
    _edit_config(folder, architectures=["GemmaForCausalLM"])
    with pytest.raises(BadModel) as caught:
        check_model(model_files(folder))
    assert caught.value.code == "UNSUPPORTED_MODEL"
    assert "GemmaForCausalLM" in str(caught.value) and "Qwen2ForCausalLM" in str(caught.value)


def test_remote_code_and_pickled_weights_are_refused(llama: Path, tmp_path: Path) -> None:
    folder = _copy(llama, tmp_path / "m")
    _edit_config(folder, auto_map={"AutoModelForCausalLM": "modeling_evil.Evil"})
    with pytest.raises(BadModel) as caught:
        check_model(model_files(folder))
    assert caught.value.code == "UNSUPPORTED_MODEL" and "auto_map" in str(caught.value)

    folder = _copy(llama, tmp_path / "p")
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04pickle")
    with pytest.raises(BadModel) as caught:
        model_files(folder)
    assert caught.value.code == "UNSAFE_MODEL" and "pytorch_model.bin" in str(caught.value)


def test_a_tokenizer_of_another_model_is_refused(llama: Path, tmp_path: Path) -> None:
    folder = _copy(llama, tmp_path / "m")
    train_tokenizer(vocab=600).save(str(folder / "tokenizer.json"))
    with pytest.raises(BadModel) as caught:
        check_model(model_files(folder))
    assert caught.value.code == "TOKENIZER_MISMATCH"
    assert "embeddings" in str(caught.value)


def run_task(
    folder: Path, prompts: list[Prompt], tmp_path: Path, **params: Any
) -> dict[str, bytes]:
    files = model_files(folder)
    info = check_model(files)
    chunk = tmp_path / "prompts.jsonl"
    chunk.write_bytes(encode_prompts(prompts))
    inputs = {k: v for k, v in files.items() if k != "tokenizer"} | {"prompts_000000": chunk}
    task = {
        "max_tokens": max(p.max_tokens for p in prompts),
        "temperature": 0.0,
        "seed": 0,
        "precision": "fp32",
        "eos": list(info.eos),
        "every": 8,
        "k": 32,
        "chunk": 0,
        "lines": [0, len(prompts)],
        "tokens_in": 0,
        "tokens_out": 0,
        **params,
    }
    workdir = tmp_path / "work"
    workdir.mkdir(exist_ok=True)
    executor = GenerateExecutor()
    exec_task = ExecTask(json.dumps(task).encode(), inputs, workdir, DeviceRef(0, "cpu", "cpu"))
    return {o.name: o.data for o in executor.run(exec_task)}


@pytest.mark.parametrize("architecture", sorted(CONFIGS))
def test_each_architecture_decodes_as_transformers_does(
    architecture: str, tokenizer: Tokenizer, tmp_path: Path
) -> None:
    folder = build(tmp_path / "model", architecture, tokenizer=tokenizer)
    texts = ["hello world", "the quick brown fox jumps over", "a"]
    ids = [tokenizer.encode(t).ids for t in texts]
    prompts = [Prompt(f"req-{i}", x, 12) for i, x in enumerate(ids)]
    outputs = run_task(folder, prompts, tmp_path)
    got = json.loads(outputs["completions.json"])["completions"]
    assert [c["custom_id"] for c in got] == ["req-0", "req-1", "req-2"]
    assert [c["tokens"] for c in got] == reference(folder, ids, 12)
    prints = json.loads(outputs["fingerprints.json"])["rows"]
    assert [f["pos"] for f in prints[0]] == [7, 11]
    assert all(len(f["idx"]) == 32 for row in prints for f in row)


def test_a_task_whose_lines_are_not_in_the_file_fails_cleanly(llama: Path, tmp_path: Path) -> None:
    prompts = [Prompt("a", [1, 2, 3], 4)]
    with pytest.raises(ExecutorError) as caught:
        run_task(llama, prompts, tmp_path, lines=[0, 5])
    assert caught.value.code == "BAD_PARAMS"


def test_config_keys_that_would_load_code_are_refused(llama: Path, tmp_path: Path) -> None:
    folder = _copy(llama, tmp_path / "m")
    _edit_config(folder, quantization_config={"quant_method": "bitsandbytes"})
    with pytest.raises(BadModel) as caught:
        check_model(model_files(folder))
    assert caught.value.code == "UNSUPPORTED_MODEL" and "quantization_config" in str(caught.value)


def test_a_check_refutes_claims_no_honest_node_could_make(llama: Path, tmp_path: Path) -> None:
    """A rogue generator's completion with ids outside the vocabulary, or longer than its
    limit, is refuted by the checker (so its node is outvoted), never a crash."""
    prompts = [Prompt("a", [5, 6, 7], 4), Prompt("b", [8, 9], 4)]
    outputs = run_task(llama, prompts, tmp_path)
    honest = [c["tokens"] for c in json.loads(outputs["completions.json"])["completions"]]
    bogus = [[10**6, 1], honest[1]]
    rows = json.loads(run_task(llama, prompts, tmp_path, claimed=bogus)["check.json"])["rows"]
    assert rows[0]["gap"] == float("inf") and rows[1]["gap"] == 0.0
    too_long = [[*honest[0], 1, 2, 3], honest[1]]
    rows = json.loads(run_task(llama, prompts, tmp_path, claimed=too_long)["check.json"])["rows"]
    assert rows[0]["gap"] == float("inf")
    rows = json.loads(run_task(llama, prompts, tmp_path, claimed=[honest[0]])["check.json"])["rows"]
    assert [r["gap"] for r in rows] == [float("inf")] * 2


def test_inputs_named_by_relative_paths_load(
    llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker run with a relative --data-dir hands its executor relative paths: the model
    folder the executor assembles must not resolve them inside itself."""
    _copy(llama, tmp_path / "m")
    monkeypatch.chdir(tmp_path)
    prompts = [Prompt("a", [1, 2, 3], 4)]
    outputs = run_task(Path("m"), prompts, Path("."))
    assert len(json.loads(outputs["completions.json"])["completions"]) == 1
