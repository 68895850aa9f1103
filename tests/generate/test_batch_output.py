"""The OpenAI Batch output file of a generation job (`--wait --out`, `write_batch_output`)
is whole or absent: a wait cut short leaves no partial file, and a file already there
keeps what it held until the whole output replaces it."""

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from sparegrid.sdk.generate import Completion, GenerateJob

REQUESTS = [{"custom_id": f"r{i}", "body": {"model": "m", "prompt": f"p{i}"}} for i in range(3)]


def job_cut_after(count: int) -> GenerateJob:
    """A job whose completions stop with a Ctrl-C after `count` of them."""
    job = GenerateJob(None, SimpleNamespace(id="j1"), None, REQUESTS, [])  # type: ignore[arg-type]

    def completions(timeout: float | None = None) -> Iterator[Completion]:
        for request in REQUESTS[:count]:
            yield Completion(request["custom_id"], "hi", [1, 2], "stop", 3)  # type: ignore[arg-type]
        raise KeyboardInterrupt

    job.completions = completions  # type: ignore[method-assign]
    return job


def lines(path: Path) -> list[Any]:
    return path.read_text().splitlines()


def test_a_wait_cut_short_leaves_no_partial_file(tmp_path: Path) -> None:
    out = tmp_path / "results.jsonl"
    with pytest.raises(KeyboardInterrupt):
        job_cut_after(2).write_batch_output(out)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # nor its staging file


def test_a_file_already_there_keeps_its_lines_until_the_whole_output_replaces_it(
    tmp_path: Path,
) -> None:
    out = tmp_path / "results.jsonl"
    out.write_text("earlier\n")
    with pytest.raises(KeyboardInterrupt):
        job_cut_after(1).write_batch_output(out)
    assert lines(out) == ["earlier"]
    assert job_cut_after(3).write_batch_output(out) == 3  # all three, then the interrupt
    assert [line.split('"custom_id": ')[1][:4] for line in lines(out)] == ['"r0"', '"r1"', '"r2"']
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.jsonl"]
