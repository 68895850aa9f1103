"""Generation jobs from asyncio, through real coordinator and worker processes:
`AsyncClient.generate`, `generate_estimate` and `generate_attach` give what the sync
`Client` gives for the same input (the same completions, the same OpenAI Batch output
lines, the same price), and refuse the same mistakes with the same errors."""

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from sparegrid.sdk import AsyncClient, InvalidArgumentError
from tests.e2e.helpers import setup
from tests.generate.models import build

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

TEXTS = ["hello world", "the quick brown fox", "volunteers lend", "hello sparegrid"]
OPTIONS: dict[str, Any] = {"max_tokens": 6, "temperature": 0.0, "seed": 7, "device": "cpu"}


def batch(path: Path, texts: list[str]) -> Path:
    lines = []
    for i, text in enumerate(texts):
        body: dict[str, Any] = (
            {"model": "tiny", "messages": [{"role": "user", "content": text}]}
            if i % 2
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


def request_ids(path: Path) -> set[str]:
    return {json.loads(line)["response"]["request_id"] for line in path.read_text().splitlines()}


def test_asyncio_generates_the_same_batch_output_as_the_sync_client(
    cluster, tmp_path: Path
) -> None:
    _, client = setup(cluster, workers=1)
    model = build(tmp_path / "llama")
    prompts = batch(tmp_path / "prompts.jsonl", TEXTS)
    synced = tmp_path / "sync.jsonl"
    sync_job = client.generate(model, prompts, **OPTIONS)
    sync_done = list(sync_job.completions(timeout=120))
    assert sync_job.write_batch_output(synced) == 4
    sync_price = client.generate_estimate(model, prompts, **OPTIONS)

    async def with_asyncio() -> None:
        async with AsyncClient(cluster.address, api_key=client.connection.api_key) as aclient:
            assert await aclient.generate_estimate(model, prompts, **OPTIONS) == sync_price

            job = await aclient.generate(model, prompts, **OPTIONS)
            assert job.price_text() == sync_job.price_text()
            done = [c async for c in job.completions(timeout=120)]
            assert done == sync_done  # custom_id, text, tokens, finish_reason, prompt_tokens
            out = tmp_path / "async.jsonl"
            assert await job.write_batch_output(out) == 4
            assert comparable(out) == comparable(synced)
            assert request_ids(out) == {job.id} != request_ids(synced)
            assert (await job.verify()).passed

            # the sync client's job, attached from asyncio after its submitter went away
            attached = await aclient.generate_attach(sync_job.id, model, prompts)
            again = tmp_path / "attached.jsonl"
            assert await attached.write_batch_output(again, timeout=30) == 4
            assert comparable(again) == comparable(synced)
            assert request_ids(again) == {sync_job.id}

    asyncio.run(with_asyncio())
    assert sorted(p.name for p in tmp_path.glob("*.jsonl")) == [
        "async.jsonl",
        "attached.jsonl",
        "prompts.jsonl",
        "sync.jsonl",
    ]  # no staged file left behind


def test_asyncio_refuses_what_the_sync_client_refuses_in_the_same_words(
    cluster, tmp_path: Path
) -> None:
    _, client = setup(cluster, workers=0)
    model = build(tmp_path / "llama")
    prompts = batch(tmp_path / "prompts.jsonl", TEXTS)
    other = batch(tmp_path / "other.jsonl", [*TEXTS[:3], "hello sparegrid!"])
    pending = client.generate(model, prompts, **OPTIONS)  # no node: it waits
    mistakes: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = [
        ("generate", (model, [{"custom_id": "a", "body": {"prompt": "hi", "n": 2}}]), OPTIONS),
        ("generate", (model, tmp_path / "absent.jsonl"), {"max_tokens": 0}),
        ("generate", (tmp_path / "absent", prompts), OPTIONS),
        ("generate_estimate", (model, prompts), {**OPTIONS, "seed": -1}),
        ("generate_attach", (pending.id, model, other), {}),
    ]

    def sync_error(method: str, args: tuple[Any, ...], options: dict[str, Any]) -> Any:
        with pytest.raises(InvalidArgumentError) as caught:
            getattr(client, method)(*args, **options)
        return caught.value

    async def async_errors() -> list[Any]:
        errors = []
        async with AsyncClient(cluster.address, api_key=client.connection.api_key) as aclient:
            for method, args, options in mistakes:
                with pytest.raises(InvalidArgumentError) as caught:
                    await getattr(aclient, method)(*args, **options)
                errors.append(caught.value)
        return errors

    expected = [sync_error(*mistake) for mistake in mistakes]
    got = asyncio.run(async_errors())
    assert [(e.code, e.message) for e in got] == [(e.code, e.message) for e in expected]
    codes = [e.code for e in got]
    assert codes == ["BAD_PROMPTS", "BAD_PARAMS", "BAD_MODEL", "BAD_PARAMS", "INPUT_MISMATCH"]
    assert [j.id for j in client.list_jobs()] == [pending.id]  # the refusals made no job
    pending.job.cancel()
