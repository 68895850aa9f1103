"""Hostile generation jobs against real coordinator and worker processes: a model whose
config.json describes more than its weights hold, and weights files whose headers lie,
are refused at submit where that can be known there, fail on the worker with BAD_INPUT
before anything is allocated where it cannot, and the worker goes on serving."""

import json
from pathlib import Path
from typing import Any

import pytest
from safetensors.torch import load_file, save_file

from sparegrid.sdk import InvalidArgumentError
from tests.e2e.helpers import setup, wait_for
from tests.generate.models import build, train_tokenizer

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

PROMPTS = [{"custom_id": "a", "body": {"prompt": "hello world"}}]


def edit_config(model: Path, **changes: Any) -> Path:
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps(config | changes))
    return model


def test_a_config_larger_than_its_weights_is_refused_at_submit(cluster, tmp_path: Path) -> None:
    admin, client = setup(cluster, workers=0)
    tokenizer = train_tokenizer()
    # the weights of 2 layers, a config of 60,000: a worker would build (and fill with
    # random values) 58 GB of layers that the job's memory estimate never counted
    deep = edit_config(build(tmp_path / "deep", tokenizer=tokenizer), num_hidden_layers=60_000)
    with pytest.raises(InvalidArgumentError) as caught:
        client.generate(deep, PROMPTS, max_tokens=2, device="cpu", task_tokens=20)
    assert caught.value.code == "MODEL_MISMATCH"
    assert "num_hidden_layers 60000 but the weights hold layers 0 to 1" in caught.value.message
    wide = edit_config(build(tmp_path / "wide", tokenizer=tokenizer), hidden_size=4096)
    with pytest.raises(InvalidArgumentError) as caught:
        client.generate(wide, PROMPTS, max_tokens=2, device="cpu")
    assert caught.value.code == "MODEL_MISMATCH" and "[300, 64]" in caught.value.message
    kernel = edit_config(
        build(tmp_path / "kernel", tokenizer=tokenizer), experts_implementation="hub/kernel"
    )
    with pytest.raises(InvalidArgumentError) as caught:
        client.generate(kernel, PROMPTS, max_tokens=2, device="cpu")
    assert caught.value.code == "UNSUPPORTED_MODEL" and "experts_implementation" in str(
        caught.value
    )

    # a pre-tokenizer that backtracks without end: the tokenizer gives up (Oniguruma's
    # retry limit) and the SDK says so, rather than raise a Rust panic at the user
    redos = build(tmp_path / "redos", tokenizer=tokenizer)
    spec = json.loads((redos / "tokenizer.json").read_text())
    pattern = {"Regex": "(a+)+$"}
    spec["pre_tokenizer"] = {"type": "Split", "pattern": pattern, "behavior": "Isolated"}
    spec["pre_tokenizer"]["invert"] = False
    (redos / "tokenizer.json").write_text(json.dumps(spec))
    long = [{"custom_id": "a", "body": {"prompt": "a" * 40 + "b"}}]
    with pytest.raises(InvalidArgumentError) as caught:
        client.generate(redos, long, max_tokens=2, device="cpu")
    assert caught.value.code == "BAD_TOKENIZER" and "retry-limit" in caught.value.message

    # straight to the coordinator, past the SDK's checks: the same rule
    from sparegrid.wire.llm import model_files

    digests = {n: client.upload(p) for n, p in model_files(deep).items()}
    digests["prompts_000000"] = client.upload(b'{"custom_id":"a","input_ids":[1,2]}\n')
    with pytest.raises(InvalidArgumentError) as caught:
        client.submit("generate", {"max_tokens": 2}, digests)
    assert caught.value.code == "MODEL_MISMATCH"

    # weights whose header lies about where tensors lie: the worker's safetensors load
    # would refuse the file after downloading it, so the coordinator refuses it first
    good = build(tmp_path / "good", tokenizer=tokenizer)
    raw = (good / "model.safetensors").read_bytes()
    digests = {n: client.upload(p) for n, p in model_files(good).items()}
    digests["weights_000"] = client.upload(raw + b"\0" * 64)  # bytes no tensor covers
    digests["prompts_000000"] = client.upload(b'{"custom_id":"a","input_ids":[1,2]}\n')
    with pytest.raises(InvalidArgumentError) as caught:
        client.submit("generate", {"max_tokens": 2}, digests)
    assert caught.value.code == "BAD_MODEL" and "64 bytes after the last tensor" in str(
        caught.value
    )
    assert client.list_jobs() == [] and admin.ledger_check().balanced


def test_weights_missing_from_a_config_fail_on_the_worker_which_goes_on(
    cluster, tmp_path: Path
) -> None:
    admin, client = setup(cluster, workers=0)
    # bounded, so that a worker that did allocate the config's MLP fails rather than
    # take the test machine's memory
    cluster.start_worker("node1", "--task-memory", "4GiB")
    wait_for(lambda: len(admin.nodes()) == 1, what="the worker online")
    tokenizer = train_tokenizer()

    # the MLP 2^24 wide in config.json (25 GB at fp32), 128 wide in the weights: what
    # the coordinator does not read is checked on the worker before anything is built
    wide = edit_config(build(tmp_path / "wide", tokenizer=tokenizer), intermediate_size=1 << 24)
    job = client.generate(wide, PROMPTS, max_tokens=2, device="cpu").job.wait(timeout=120)
    assert job.state == "failed"
    assert "BAD_INPUT" in job.error and "no stored tensor for model.layers.0.mlp" in job.error

    # no output head in the weights: transformers would fill one with random values, a
    # different model on every node (honest nodes would disagree and be blamed)
    headless = build(tmp_path / "headless", tokenizer=tokenizer)
    weights = load_file(str(headless / "model.safetensors"))
    weights["unused.weight"] = weights.pop("lm_head.weight")  # same shape, another name
    save_file(weights, str(headless / "model.safetensors"))
    job = client.generate(headless, PROMPTS, max_tokens=2, device="cpu").job.wait(timeout=120)
    assert job.state == "failed"
    assert "BAD_INPUT" in job.error and "lm_head.weight" in job.error

    # the worker goes on serving
    good = build(tmp_path / "good", tokenizer=tokenizer)
    done = client.generate(good, PROMPTS, max_tokens=2, device="cpu")
    assert len(list(done.completions(timeout=120))) == 1
    assert admin.ledger_check().balanced


def test_prompts_are_split_by_their_padded_size(cluster, tmp_path: Path) -> None:
    admin, client = setup(cluster, workers=0)
    cluster.start_worker("node1", "--task-memory", "4GiB")  # as above
    wait_for(lambda: len(admin.nodes()) == 1, what="the worker online")
    from sparegrid.wire.llm import model_files

    model = build(tmp_path / "llama", context=8192)
    digests = {n: client.upload(p) for n, p in model_files(model).items()}
    # 16,001 tokens in all, within one task's default budget of 16,384 when summed; but a
    # worker pads every prompt of a task to the longest: 6,001 rows of 4,001 tokens, 24M
    # tokens in one batch (6 GB of hidden states for this tiny model, far more for a
    # real one, against an estimate of 16k tokens)
    lines = [{"custom_id": "long", "input_ids": [5] * 4000, "max_tokens": 1}]
    lines += [{"custom_id": f"s{i}", "input_ids": [7], "max_tokens": 1} for i in range(6000)]
    digests["prompts_000000"] = client.upload(
        "".join(json.dumps(line) + "\n" for line in lines).encode()
    )
    job = client.submit("generate", {"max_tokens": 1}, digests)
    # the long prompt with 3 short ones (4 x 4,001), then the rest 8,192 to a task (x 2)
    assert job.counts.total == 2
    job = job.wait(timeout=200)
    assert job.state == "succeeded", job.error

    # one prompt over the budget on its own is refused, saying how to raise it
    digests["prompts_000000"] = client.upload(json.dumps(lines[0]).encode())
    with pytest.raises(InvalidArgumentError) as caught:
        client.submit("generate", {"max_tokens": 1, "task_tokens": 1000}, digests)
    assert caught.value.code == "PROMPT_TOO_LONG" and "raise task_tokens" in caught.value.message
    assert admin.ledger_check().balanced


def test_the_memory_a_job_asks_for_counts_its_logits(cluster, tmp_path: Path) -> None:
    _, client = setup(cluster, workers=1)
    # 8-wide embeddings over a million ids: 64 MB of weights, but every position a task
    # scores takes 4 MB of logits; a task of 16,384 tokens needs 64 GB, more than this
    # machine has: the job waits, saying so, rather than run a worker out of memory
    model = build(tmp_path / "wide", hidden=8, layers=1, vocab=1_000_000)
    job = client.generate(model, PROMPTS, max_tokens=2, device="cpu").job

    def waiting() -> str:
        return job.refresh().waiting

    wait_for(lambda: "a CPU with 61.3 GiB of memory" in waiting(), what="why the job waits")
    assert job.refresh().state in ("queued", "running") and job.counts.succeeded == 0


def peak_memory(pid: int) -> int:
    """A process's peak resident memory (VmHWM), bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) << 10
    raise AssertionError("no VmHWM")


def test_a_tokenizer_of_millions_of_ids_costs_the_coordinator_little(
    cluster, tmp_path: Path
) -> None:
    admin, client = setup(cluster, workers=0)
    from sparegrid.wire.llm import model_files

    model = build(tmp_path / "llama")
    digests = {n: client.upload(p) for n, p in model_files(model).items()}
    # 31M ids in 62 MiB, under the 64 MiB a tokenizer.json may be: counted as a range of
    # ids it took the coordinator 1.5 GB and 15 s of one submit
    digests["tokenizer"] = client.upload(b'{"model":{"vocab":[' + b"0," * (31 << 20) + b"0]}}")
    digests["prompts_000000"] = client.upload(b'{"custom_id":"a","input_ids":[1,2]}\n')
    with pytest.raises(InvalidArgumentError) as caught:
        client.submit("generate", {"max_tokens": 2}, digests)
    assert caught.value.code == "TOKENIZER_MISMATCH" and "32505856" in caught.value.message
    assert cluster.coordinator is not None
    assert peak_memory(cluster.coordinator.popen.pid) < 1 << 30
    assert client.list_jobs() == [] and admin.ledger_check().balanced
