"""Writing a job's results to a directory: outputs checked against their digests, receipts
verified, an index (results.json), and a staged directory so a failure leaves nothing."""

import contextlib
import json
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sparegrid.sdk import Client, InvalidArgumentError, TaskResult, TaskState, VerificationError


def safe_name(name: str) -> str:
    """An output name as a file name: no directories, no hidden or empty names."""
    cleaned = re.sub(r"[^A-Za-z0-9_.-]", "_", name).lstrip(".")
    return cleaned or "output"


def write_outputs(
    client: Client, result: TaskResult, task_dir: Path, problems: list[str]
) -> dict[str, str]:
    """Writes each output whose bytes match its digest; the others become problems."""
    written: dict[str, str] = {}
    for ref in result.outputs:
        dest = task_dir / safe_name(ref.name)
        try:
            if ref.digest in result.inline_outputs:
                data = result.output(ref.name)
                task_dir.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(data)
            else:
                client.download(ref.digest, dest)
        except VerificationError as exc:
            problems.append(exc.message)
            continue
        written[ref.name] = str(dest.relative_to(task_dir.parent))
    return written


def check(result: TaskResult, coordinator_key: bytes) -> str | None:
    """None when the receipt and its countersignature verify, else why not."""
    try:
        result.verify(coordinator_key=coordinator_key)
    except VerificationError as exc:
        return exc.message
    return None


def problems_of(client: Client, result: TaskResult) -> list[str]:
    """Why a result cannot be trusted (empty: its receipt verifies)."""
    if result.state is not TaskState.SUCCEEDED:
        return [f"task {result.state.value}, no result to verify"]
    problem = check(result, client.coordinator_key())
    return [problem] if problem is not None else []


def record(
    result: TaskResult, out_dir: Path, files: dict[str, str], problems: list[str]
) -> dict[str, Any]:
    """Writes the task's receipt under out_dir/receipts/; its entry in results.json."""
    label = f"task_{result.index:05d}"
    if result.receipt is not None:
        receipt = out_dir / "receipts" / f"{label}.receipt"
        receipt.parent.mkdir(parents=True, exist_ok=True)
        receipt.write_bytes(result.receipt.SerializeToString())
    return {
        "task": result.index,
        "task_id": result.task_id,
        "state": result.state.value,
        "node": result.node_id,
        "error": result.error,
        "outputs": [
            {"name": r.name, "digest": r.digest, "size": r.size, "file": files.get(r.name)}
            for r in result.outputs
        ],
        "receipt": f"receipts/{label}.receipt" if result.receipt is not None else None,
        "verified": not problems,
        "problems": problems,
    }


def write_result(client: Client, result: TaskResult, out_dir: Path) -> dict[str, Any]:
    problems = problems_of(client, result)
    files = write_outputs(client, result, out_dir / f"task_{result.index:05d}", problems)
    return record(result, out_dir, files, problems)


def check_output_dir(out_dir: Path, force: bool) -> None:
    """DIR must be new or empty (or --force): results never mix with other files unasked."""
    if out_dir.exists() and not out_dir.is_dir():
        raise InvalidArgumentError("OUTPUT_EXISTS", f"{out_dir} exists and is not a directory")
    if not force and out_dir.is_dir() and any(out_dir.iterdir()):
        raise InvalidArgumentError(
            "OUTPUT_EXISTS",
            f"{out_dir} already holds files; choose a new directory, or pass --force to "
            "write into it (files of the same names are replaced)",
        )


@contextlib.contextmanager
def staged(out_dir: Path) -> Iterator[Path]:
    """Where to write `out_dir`'s files so that a failure leaves nothing behind.

    A new `out_dir` is built beside it and renamed into place once complete; an existing
    one (empty, or --force) is written in place, and emptied again on failure if it was empty.
    """
    if out_dir.is_dir():
        was_empty = not any(out_dir.iterdir())
        try:
            yield out_dir
        except BaseException:
            if was_empty:
                for child in out_dir.iterdir():
                    if child.is_dir():
                        shutil.rmtree(child)
                    else:
                        child.unlink()
            raise
        return
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    stage = out_dir.parent / f".{out_dir.name}.partial-{uuid.uuid4().hex[:8]}"
    stage.mkdir()
    try:
        yield stage
        stage.rename(out_dir)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def write_index(
    out_dir: Path, job_id: str, entries: list[dict[str, Any]], merged: str | None = None
) -> None:
    index: dict[str, Any] = {"job": job_id, "results": entries}
    if merged:
        index["merged"] = merged
    (out_dir / "results.json").write_text(json.dumps(index, indent=2) + "\n")
