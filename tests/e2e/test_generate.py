"""Generation through real coordinator and worker processes, driven through the SDK and
the CLI: completions match transformers' own generate of the same weights token for token,
every result is checked by one prefill on the other node, and bad jobs are refused at
submit, changing nothing."""

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sparegrid.sdk import InvalidArgumentError
from sparegrid.v1 import common_pb2
from tests.e2e.test_cluster import setup, wait_for
from tests.generate.models import CONFIGS, build, reference, train_tokenizer

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

TEXTS = [
    "hello world",
    "the quick brown fox jumps over the lazy dog",
    "volunteers lend",
    "a prompt goes in and a completion comes out",
    "hello sparegrid",
]


def requests(texts: list[str], chat_every: int = 2) -> list[dict[str, Any]]:
    items = []
    for i, text in enumerate(texts):
        if i % chat_every:
            body: dict[str, Any] = {
                "model": "tiny",
                "messages": [{"role": "user", "content": text}],
            }
            url = "/v1/chat/completions"
        else:
            body, url = {"model": "tiny", "prompt": text}, "/v1/completions"
        items.append({"custom_id": f"req-{i}", "method": "POST", "url": url, "body": body})
    return items


def split(prompts: list[list[int]], limit: int, budget: int) -> list[list[int]]:
    """Prompt indexes by task, as the coordinator splits them (kinds/generate.py): each
    task's prompts padded to its longest, plus `limit`, within `budget`."""
    tasks: list[list[int]] = [[]]
    width = 0
    for i, p in enumerate(prompts):
        if tasks[-1] and (len(tasks[-1]) + 1) * (max(width, len(p)) + limit) > budget:
            tasks.append([])
            width = 0
        tasks[-1].append(i)
        width = max(width, len(p))
    return tasks


def test_a_batch_file_decodes_on_two_workers_like_a_local_run(cluster, tmp_path: Path) -> None:
    admin, client = setup(cluster, workers=2)
    tokenizer = train_tokenizer()
    model = build(tmp_path / "qwen", "Qwen2ForCausalLM", tokenizer=tokenizer)
    batch = tmp_path / "prompts.jsonl"
    batch.write_text("".join(json.dumps(r) + "\n" for r in requests(TEXTS)))
    job = client.generate(model, batch, max_tokens=10, device="cpu", task_tokens=60)
    done = list(job.completions(timeout=150))
    assert [c.custom_id for c in done] == [f"req-{i}" for i in range(5)]

    # the same weights, the same batches, transformers' own generate
    from sparegrid.sdk.generate import Tokenizer

    local = Tokenizer(model)
    texts = [
        r["body"].get("prompt") or local.render(r["body"]["messages"]) for r in requests(TEXTS)
    ]
    ids = [local.encode(t) for t in texts]
    assert [c.prompt_tokens for c in done] == [len(i) for i in ids]
    groups = split(ids, 10, 60)
    assert len(groups) == job.job.refresh().counts.total > 1
    for group in groups:
        expected = reference(model, [ids[i] for i in group], 10)
        assert [done[i].tokens for i in group] == expected
    assert all(c.text == tokenizer.decode(c.tokens, skip_special_tokens=True) for c in done)

    # two new nodes: each result was confirmed by one prefill on the other node
    key = client.coordinator_key()
    results = job.job.results()
    checks = [r.validation(key) for r in results]
    assert {v.method for v in checks} == {common_pb2.VALIDATION_METHOD_SPOT_CHECKED}, checks
    assert job.verify().passed
    assert admin.ledger_check().balanced

    out = tmp_path / "out.jsonl"
    assert job.write_batch_output(out, timeout=30) == 5
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["custom_id"] for line in lines] == [f"req-{i}" for i in range(5)]
    assert lines[1]["response"]["body"]["choices"][0]["message"]["content"] == done[1].text
    assert lines[0]["response"]["body"]["usage"]["completion_tokens"] == len(done[0].tokens)


@pytest.mark.timeout(600)
def test_every_supported_architecture_decodes_through_the_network(cluster, tmp_path: Path) -> None:
    _, client = setup(cluster, workers=2)
    tokenizer = train_tokenizer()
    from sparegrid.sdk.generate import Tokenizer

    jobs = {}
    for architecture in CONFIGS:
        model = build(tmp_path / architecture, architecture, tokenizer=tokenizer)
        jobs[architecture] = (
            model,
            client.generate(model, requests(TEXTS[:3], chat_every=1), max_tokens=8, device="cpu"),
        )
    for architecture, (model, job) in jobs.items():
        done = [c.tokens for c in job.completions(timeout=500)]
        local = Tokenizer(model)
        ids = [local.encode(t) for t in TEXTS[:3]]
        assert done == reference(model, ids, 8), architecture
        assert job.verify().passed


def test_the_cli_submits_a_batch_file_and_writes_the_batch_output(cluster, tmp_path: Path) -> None:
    _, client = setup(cluster, workers=1)
    model = build(tmp_path / "neox", "GPTNeoXForCausalLM")
    batch = tmp_path / "prompts.jsonl"
    batch.write_text("".join(json.dumps(r) + "\n" for r in requests(TEXTS[:3])))
    out = tmp_path / "out.jsonl"
    cmd = [sys.executable, "-m", "sparegrid.cli.main", "job", "submit", "generate",
           "--model", str(model), "--prompts", str(batch), "--max-tokens", "6",
           "--device", "cpu", "--wait", "--timeout", "120", "--out", str(out)]  # fmt: skip
    env = {**cluster.env, "SPAREGRID_API_KEY": client.connection.api_key,
           "SPAREGRID_COORDINATOR": cluster.address}  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False, timeout=170)
    assert done.returncode == 0, done.stderr
    assert "prompt tokens, up to 18 generated" in done.stderr and "credit held" in done.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["custom_id"] for line in lines] == ["req-0", "req-1", "req-2"]
    assert all(line["response"]["status_code"] == 200 for line in lines)


def test_a_dry_run_prices_a_generate_job_and_submits_nothing(cluster, tmp_path: Path) -> None:
    admin, client = setup(cluster, workers=0)
    model = build(tmp_path / "llama")
    batch = tmp_path / "prompts.jsonl"
    batch.write_text("".join(json.dumps(r) + "\n" for r in requests(TEXTS[:3])))
    cmd = [sys.executable, "-m", "sparegrid.cli.main", "job", "submit", "generate",
           "--model", str(model), "--prompts", str(batch), "--max-tokens", "6",
           "--device", "cpu", "--dry-run", "--json"]  # fmt: skip
    env = {**cluster.env, "SPAREGRID_API_KEY": client.connection.api_key,
           "SPAREGRID_COORDINATOR": cluster.address}  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False, timeout=120)
    assert done.returncode == 0, done.stderr  # it used to be refused: not available yet
    found = json.loads(done.stdout)
    assert found["tasks"] == 1 and found["work_unit"] == "token" and found["affordable"]
    assert client.list_jobs() == []
    sdk = client.generate_estimate(model, batch, max_tokens=6, device="cpu")
    assert sdk.max_held == found["max_held"]
    job = client.generate(model, batch, max_tokens=6, device="cpu")
    assert job.job.cost_held == found["max_held"]  # what the estimate said
    job.job.cancel()
    assert admin.ledger_check().balanced


def test_bad_generate_jobs_are_refused_and_change_nothing(cluster, tmp_path: Path) -> None:
    admin, client = setup(cluster, workers=0)
    tokenizer = train_tokenizer()
    model = build(tmp_path / "llama", tokenizer=tokenizer, context=32)
    batch = tmp_path / "prompts.jsonl"

    def refused(path: Path | list[dict[str, Any]], model_dir: Path = model, **kw: Any) -> Any:
        with pytest.raises(InvalidArgumentError) as caught:
            client.generate(model_dir, path, max_tokens=4, device="cpu", **kw)
        return caught.value

    good = requests(TEXTS[:2])
    batch.write_text(json.dumps(good[0]) + "\n" + "{not json\n")
    err = refused(batch)
    assert err.code == "BAD_PROMPTS" and "line 2" in err.message
    err = refused([{"custom_id": "a", "body": {"prompt": "hi", "n": 2}}])
    assert err.code == "BAD_PROMPTS" and "n 2 is not supported" in err.message
    err = refused([{"custom_id": "a", "body": {"prompt": "hi", "temperature": 0.5}}])
    assert err.code == "BAD_PROMPTS" and "differs from the job's 0.0" in err.message

    long = [{"custom_id": "long", "body": {"prompt": "hello world " * 40}}]
    err = refused(long)
    assert err.code == "PROMPT_TOO_LONG" and "context of 32" in err.message

    unknown = tmp_path / "unknown"
    build(unknown, tokenizer=tokenizer)
    config = json.loads((unknown / "config.json").read_text())
    config["architectures"] = ["MambaForCausalLM"]
    (unknown / "config.json").write_text(json.dumps(config))
    err = refused(good, unknown)
    assert err.code == "UNSUPPORTED_MODEL" and "LlamaForCausalLM" in err.message

    mismatch = build(tmp_path / "other", tokenizer=tokenizer)
    train_tokenizer(vocab=700).save(str(mismatch / "tokenizer.json"))
    err = refused(good, mismatch)
    assert err.code == "TOKENIZER_MISMATCH"

    # straight to the coordinator, past the SDK's checks: it applies the same rules
    from sparegrid.wire.llm import model_files

    digests = {n: client.upload(p) for n, p in model_files(mismatch).items()}
    digests["prompts_000000"] = client.upload(
        b'{"custom_id":"a","input_ids":[1,2],"max_tokens":2}\n'
    )
    with pytest.raises(InvalidArgumentError) as caught:
        client.submit("generate", {"max_tokens": 2}, digests)
    assert caught.value.code == "TOKENIZER_MISMATCH"
    digests = {n: client.upload(p) for n, p in model_files(model).items()}
    digests["prompts_000000"] = client.upload(b'{"custom_id":"a","input_ids":[1,2]}\n[1,2\n')
    with pytest.raises(InvalidArgumentError) as caught:
        client.submit("generate", {"max_tokens": 2}, digests)
    assert caught.value.code == "BAD_PROMPTS" and "line 2" in caught.value.message
    digests["prompts_000000"] = client.upload(
        json.dumps({"custom_id": "a", "input_ids": [1] * 31}).encode()
    )
    with pytest.raises(InvalidArgumentError) as caught:
        client.submit("generate", {"max_tokens": 2}, digests)
    assert caught.value.code == "PROMPT_TOO_LONG"
    assert client.list_jobs() == []
    assert admin.ledger_check().balanced


def test_a_model_no_connected_device_can_hold_waits_and_says_why(cluster, tmp_path: Path) -> None:
    _, client = setup(cluster, workers=1)
    model = build(tmp_path / "phi", "Phi3ForCausalLM")
    # by default a model runs on GPUs with memory enough for it; this cluster has a CPU
    job = client.generate(model, requests(TEXTS[:1]), max_tokens=4)

    def waiting() -> str:
        return job.job.refresh().waiting

    wait_for(lambda: "needs a GPU with" in waiting(), what="the job to say why it waits")
    assert "GiB of memory or more" in waiting()  # the weights and a KV cache
    assert job.job.refresh().state in ("queued", "running")
