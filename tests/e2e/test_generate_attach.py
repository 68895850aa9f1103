"""A generation job's OpenAI Batch output fetched after the submitter went away:
`sparegrid job results J --batch-out FILE --model DIR --prompts JSONL` writes what
`submit --wait --out` would have, and refuses (writing nothing) a model or prompts file
other than the job's, a job of another kind, a running job and a file that exists."""

import json
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.helpers import run_cli, setup
from tests.generate.models import build, train_tokenizer

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

TEXTS = ["hello world", "the quick brown fox", "volunteers lend", "hello sparegrid"]


def batch(path: Path, texts: list[str]) -> Path:
    lines = []
    for i, text in enumerate(texts):
        chat = i % 2 == 1
        body: dict[str, Any] = (
            {"model": "tiny", "messages": [{"role": "user", "content": text}]}
            if chat
            else {"model": "tiny", "prompt": text}
        )
        lines.append(json.dumps({"custom_id": f"req-{i}", "body": body}) + "\n")
    path.write_text("".join(lines))
    return path


def comparable(path: Path) -> list[dict[str, Any]]:
    """The lines without what is random on each write (the ids) or names the job."""
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    for line in lines:
        del line["id"]
        del line["response"]["body"]["id"]
        del line["response"]["request_id"]
    return lines


def test_a_job_submitted_without_waiting_writes_the_same_batch_output(
    cluster, tmp_path: Path
) -> None:
    _, client = setup(cluster, workers=1)
    env = {**cluster.env, "SPAREGRID_API_KEY": client.connection.api_key,
           "SPAREGRID_COORDINATOR": cluster.address}  # fmt: skip
    model = build(tmp_path / "llama")
    prompts = batch(tmp_path / "prompts.jsonl", TEXTS)
    options = ["--max-tokens", "6", "--temperature", "0", "--seed", "7", "--device", "cpu"]
    waited = tmp_path / "waited.jsonl"
    done = run_cli(env, "job", "submit", "generate", "--model", str(model), "--prompts",
                   str(prompts), *options, "--wait", "--timeout", "120", "--out", str(waited))  # fmt: skip
    assert done.returncode == 0, done.stderr

    submitted = run_cli(env, "job", "submit", "generate", "--model", str(model),
                        "--prompts", str(prompts), *options)  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    client.get_job(job_id).wait(timeout=120)

    out = tmp_path / "results.jsonl"
    attach = ["job", "results", job_id, "--batch-out", str(out), "--model", str(model)]

    other = batch(tmp_path / "other.jsonl", [*TEXTS[:3], "hello sparegrid!"])
    refused = run_cli(env, *attach, "--prompts", str(other))
    assert refused.returncode == 1 and "[INPUT_MISMATCH]" in refused.stderr, refused.stderr
    assert str(other) in refused.stderr and not out.exists()

    fetched = run_cli(env, *attach, "--prompts", str(prompts))
    assert fetched.returncode == 0, fetched.stderr
    assert f"wrote 4 completions to {out}" in fetched.stderr
    assert comparable(out) == comparable(waited)
    assert [json.loads(line)["response"]["request_id"] for line in out.read_text().splitlines()] == [job_id] * 4  # fmt: skip
    assert list(tmp_path.glob(".results.jsonl.*")) == []  # no staged file left behind

    before = out.read_bytes()
    again = run_cli(env, *attach, "--prompts", str(prompts))
    assert (
        again.returncode == 1 and "[BAD_FLAGS]" in again.stderr and "already exists" in again.stderr
    )
    assert out.read_bytes() == before

    echo = client.echo("hi", tasks=1)
    other_kind = run_cli(env, "job", "results", echo.id, "--batch-out", str(tmp_path / "e.jsonl"),
                         "--model", str(model), "--prompts", str(prompts))  # fmt: skip
    assert other_kind.returncode == 1 and "[NOT_A_GENERATE_JOB]" in other_kind.stderr
    assert not (tmp_path / "e.jsonl").exists()


def test_a_running_job_is_not_written_and_another_model_is_named(cluster, tmp_path: Path) -> None:
    _, client = setup(cluster, workers=0)
    env = {**cluster.env, "SPAREGRID_API_KEY": client.connection.api_key,
           "SPAREGRID_COORDINATOR": cluster.address}  # fmt: skip
    tokenizer = train_tokenizer()
    model = build(tmp_path / "llama", tokenizer=tokenizer)
    prompts = batch(tmp_path / "prompts.jsonl", TEXTS)
    job = client.generate(model, prompts, max_tokens=6, device="cpu")  # no node: it waits
    out = tmp_path / "results.jsonl"
    attach = ["job", "results", job.id, "--batch-out", str(out), "--prompts", str(prompts)]

    running = run_cli(env, *attach, "--model", str(model))
    assert running.returncode == 1 and "[JOB_NOT_FINISHED]" in running.stderr, running.stderr
    assert f"sparegrid job wait {job.id}" in running.stderr and not out.exists()

    other = build(tmp_path / "other", seed=1, tokenizer=tokenizer)  # the same files, other weights
    refused = run_cli(env, *attach, "--model", str(other))
    assert refused.returncode == 1 and "[INPUT_MISMATCH]" in refused.stderr, refused.stderr
    assert ".safetensors" in refused.stderr and not out.exists()
    job.job.cancel()
