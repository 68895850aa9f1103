"""A job's results as files: the results.json index, receipts kept beside the outputs, a
staged directory so that a failure leaves nothing, and a tiled still stitched back.

Shared by `sparegrid job results` and `Job.write_frames`, so that a folder written from
Python is the folder the CLI writes (and `sparegrid job verify --dir` checks either).
"""

import contextlib
import json
import re
import shutil
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sparegrid.sdk import render
from sparegrid.sdk.errors import InvalidArgumentError, VerificationError
from sparegrid.sdk.results import TaskResult


def safe_name(name: str) -> str:
    """An output name as a file name: no directories, no hidden or empty names."""
    cleaned = re.sub(r"[^A-Za-z0-9_.-]", "_", name).lstrip(".")
    return cleaned or "output"


def check(result: TaskResult, coordinator_key: bytes) -> str | None:
    """None when the receipt and its countersignature verify, else why not."""
    try:
        result.verify(coordinator_key=coordinator_key)
    except VerificationError as exc:
        return exc.message
    return None


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


@dataclass(frozen=True)
class RenderFiles:
    """What `Job.write_frames` (and `sparegrid job results`) wrote for a render job.

    `entries` are results.json's, one per task; `still` is the stitched frame of a tiled
    still, None when there is none (an animation, a job not complete, or EXR tiles on a
    client without bpy: `note` then says so and where the tiles are)."""

    directory: Path
    entries: list[dict[str, Any]]
    frames: list[Path]
    tiles: list[Path]
    still: Path | None = None
    note: str = ""

    @property
    def problems(self) -> dict[int, list[str]]:
        """Task index -> why its outputs cannot be trusted or were not written, for each
        task that succeeded on the coordinator but does not check out here."""
        return {
            e["task"]: e["problems"]
            for e in self.entries
            if e["problems"] and e["state"] == "succeeded"
        }


def stitch_still(
    tiles: Sequence[Path], out_dir: Path, shown: Path | None = None
) -> tuple[Path | None, str]:
    """Stitches a tiled still into out_dir/still.ext: (the frame, what was done), or (None,
    why not) for EXR tiles without bpy here. `shown` is the directory to name in messages
    when out_dir is a staging directory renamed to it afterwards."""
    width, height = render.frame_size(tiles)
    ext = tiles[0].suffix
    frame = out_dir / f"still{ext}"
    if ext == ".exr" and not render.have_blender():  # PNG tiles need no Blender
        return None, (
            f"tiles are in {(shown or out_dir) / 'tiles'}; stitching EXR tiles into "
            f"{frame.name} needs bpy: pip install 'sparegrid[render]' (Python 3.11)"
        )
    render.stitch_tiles(sorted(tiles), frame, width, height)
    return frame, f"stitched {len(tiles)} tiles into {frame.name} ({width}x{height})"
