"""`AsyncClient.generate` and `generate_attach` tokenize the prompts and hash the model
folder in a thread: the caller's event loop (a server, a UI, other jobs) keeps running
meanwhile instead of stalling for as long as a large batch or model takes."""

import asyncio
import json
import threading
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from sparegrid.sdk import attach, batchfile
from sparegrid.sdk._async import generate
from sparegrid.sdk.errors import InvalidArgumentError
from sparegrid.sdk.models import JobCounts, JobSnapshot, JobState
from sparegrid.wire.llm import model_files


class NoClient:
    """A client whose every call fails: each test here stops at its first use."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the client was used ({name})")


def waits_for_the_loop(real: Callable[..., Any], loop_ran: threading.Event) -> Callable[..., Any]:
    """`real`, first waiting for a task on the event loop to run: it never does while
    `real` holds the loop's thread."""

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        assert loop_ran.wait(timeout=10), "the event loop stood still while this ran"
        return real(*args, **kwargs)

    return wrapped


async def meanwhile(loop_ran: threading.Event) -> None:
    await asyncio.sleep(0.01)
    loop_ran.set()


def batch(path: Path) -> Path:
    path.write_text(json.dumps({"custom_id": "a", "body": {"prompt": "hello world"}}) + "\n")
    return path


async def test_tokenizing_leaves_the_event_loop_running(
    llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loop_ran = threading.Event()
    monkeypatch.setattr(batchfile, "tokenize", waits_for_the_loop(batchfile.tokenize, loop_ran))
    task = asyncio.create_task(meanwhile(loop_ran))
    with pytest.raises(AssertionError, match=r"the client was used \(info\)"):
        await generate.submit(NoClient(), llama, batch(tmp_path / "b.jsonl"), max_tokens=4)  # type: ignore[arg-type]
    await task


async def test_hashing_the_model_folder_leaves_the_event_loop_running(
    llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loop_ran = threading.Event()
    monkeypatch.setattr(attach, "hash_file", waits_for_the_loop(attach.hash_file, loop_ran))
    files = model_files(llama)  # the folder as a submit would send it
    snapshot = JobSnapshot(
        "j1", "generate", "", JobState.SUCCEEDED, JobCounts(total=1), 1, 1,
        inputs={**{name: "0" * 64 for name in files}, "prompts_000000": "0" * 64},
        params=json.dumps({"max_tokens": 4, "temperature": 0.0, "seed": 0}).encode(),
    )  # fmt: skip

    class OneJob(NoClient):
        async def get_job(self, job_id: str) -> Any:
            return SimpleNamespace(snapshot=snapshot)

    task = asyncio.create_task(meanwhile(loop_ran))
    with pytest.raises(InvalidArgumentError) as caught:
        await generate.attach(OneJob(), "j1", llama, batch(tmp_path / "b.jsonl"))  # type: ignore[arg-type]
    assert caught.value.code == "INPUT_MISMATCH"  # the digests here are made up
    assert "its digest is not the one the job's input names" in caught.value.message
    await task
