"""A generation job its account cannot pay for is refused before its model and prompts are
uploaded: `Client.generate` and `sparegrid job submit generate` price the tokenized
prompts at the coordinator's published price and compare the account's balance first.
They used to upload the whole model folder (often many GB) and learn only at submit that
the account was short. The price checked is a lower bound, so a job the coordinator would
accept is never refused, and the coordinator's own check still refuses the rest."""

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from sparegrid.sdk import AsyncClient, Client, FailedPreconditionError
from tests.coordinator.conftest import Cli, Served
from tests.generate.models import build, train_tokenizer

pytestmark = pytest.mark.timeout(120)

TEXTS = ["hello world", "the quick brown fox", "volunteers lend", "hello sparegrid"]


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(tmp_path_factory.mktemp("models") / "llama", tokenizer=train_tokenizer())


def batch(path: Path) -> Path:
    lines = [json.dumps({"custom_id": f"r{i}", "body": {"prompt": t}}) for i, t in enumerate(TEXTS)]
    path.write_text("\n".join(lines) + "\n")
    return path


def stored(served: Served) -> list[Path]:
    """Every file in the coordinator's blob store: blobs, partial uploads, trash."""
    root: Path = served.app.blobs.root  # type: ignore[attr-defined]
    return sorted(p for p in root.rglob("*") if p.is_file())


async def generate(served: Served, key: str, model: Path, prompts: Path, **options: Any) -> Any:
    """Client.generate (sync, as the SDK offers it) in a thread: the coordinator serves on
    this test's loop."""

    def run() -> Any:
        with Client(served.address, key) as client:
            return client.generate(model, prompts, device="cpu", **options)

    return await asyncio.to_thread(run)


async def estimate(served: Served, key: str, model: Path, prompts: Path, **options: Any) -> Any:
    def run() -> Any:
        with Client(served.address, key) as client:
            return client.generate_estimate(model, prompts, device="cpu", **options)

    return await asyncio.to_thread(run)


async def test_a_short_account_is_refused_before_any_upload(
    served: Served, cli: Cli, llama: Path, tmp_path: Path
) -> None:
    _, key = served.app.accounts.create("carol", 5)
    prompts = batch(tmp_path / "batch.jsonl")
    before = stored(served)

    with pytest.raises(FailedPreconditionError) as refused:
        await generate(served, key, llama, prompts, max_tokens=128)
    assert stored(served) == before  # not one byte of the model or prompts
    assert refused.value.code == "INSUFFICIENT_CREDIT"
    message = refused.value.message
    assert message.startswith("job costs at least ") and "account 'carol' holds 5" in message
    assert "nothing was uploaded" in message
    assert "sparegrid admin credit grant carol AMOUNT" in message
    assert served.app.store.list_jobs(limit=100) == []

    # the CLI says the same and exits 1, uploading nothing
    args = ["job", "submit", "generate", "--model", str(llama), "--prompts", str(prompts)]
    args += ["--max-tokens", "128", "--device", "cpu"]
    short = await cli(*args, key=key)
    assert short.code == 1 and "[INSUFFICIENT_CREDIT]" in short.err, short.err
    assert "account 'carol' holds 5" in short.err and "nothing was uploaded" in short.err
    assert short.out == "" and stored(served) == before

    # --dry-run still prices the job (uploading, as it did) and says NOT ENOUGH
    dry = await cli(*args, "--dry-run", key=key)
    assert dry.code == 1 and "NOT ENOUGH" in dry.out, dry.err
    assert served.app.store.list_jobs(limit=100) == []


async def test_the_precheck_never_refuses_what_the_coordinator_accepts(
    served: Served, llama: Path, tmp_path: Path
) -> None:
    # one prompt a task: each task's credit is rounded up on its own, so the coordinator
    # holds more than the tokens at the price rounded once, the lower bound checked first
    prompts = batch(tmp_path / "batch.jsonl")
    options = {"max_tokens": 64, "task_tokens": 100}
    priced = await estimate(served, served.alice_key, llama, prompts, **options)
    assert priced.tasks == len(TEXTS)

    _, exact_key = served.app.accounts.create("dave", priced.max_held)
    job = await generate(served, exact_key, llama, prompts, **options)
    assert job.job.cost_held == priced.max_held
    assert served.app.accounts.balance(served.app.accounts.get("dave")) == 0

    # one credit short of what it holds: the pre-check's least passes, the coordinator's
    # own check at submit refuses it, in its words
    _, short_key = served.app.accounts.create("erin", priced.max_held - 1)
    with pytest.raises(FailedPreconditionError) as refused:
        await generate(served, short_key, llama, prompts, **options)
    assert refused.value.code == "INSUFFICIENT_CREDIT"
    assert refused.value.message.startswith(f"job costs up to {priced.max_held} credit")


async def test_asyncio_is_refused_before_any_upload_in_the_same_words(
    served: Served, llama: Path, tmp_path: Path
) -> None:
    _, key = served.app.accounts.create("frank", 5)
    prompts = batch(tmp_path / "batch.jsonl")
    before = stored(served)
    with pytest.raises(FailedPreconditionError) as sync_refused:
        await generate(served, key, llama, prompts, max_tokens=128)

    async with AsyncClient(served.address, key) as client:
        with pytest.raises(FailedPreconditionError) as refused:
            await client.generate(llama, prompts, device="cpu", max_tokens=128)
    assert refused.value.code == "INSUFFICIENT_CREDIT"
    assert refused.value.message == sync_refused.value.message
    assert "account 'frank' holds 5" in refused.value.message
    assert stored(served) == before  # not one byte of the model or prompts
    assert served.app.store.list_jobs(limit=100) == []
