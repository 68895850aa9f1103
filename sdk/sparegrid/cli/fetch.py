"""`job results --continue` (only what is new or missing, resumable) and `job preview`.

`--continue` writes into DIR in place, so that it can run again and again while a job
runs: an output already there is kept when its bytes have the digest its receipt names,
and fetched otherwise; a download cut short leaves a partial file beside its destination,
which the next run resumes from. results.json is rewritten (atomically) at the end of each
run and names the job, so a directory of another job's results is refused.
"""

import argparse
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sparegrid.cli import common, output
from sparegrid.cli.results import problems_of, record, safe_name
from sparegrid.sdk import Client, InvalidArgumentError, Job, TaskResult, TaskState
from sparegrid.sdk import render as sdk_render
from sparegrid.sdk.resultfiles import stitch_still

HASH_BLOCK = 1 << 20


@dataclass
class Fetched:
    new: int = 0  # outputs fetched now
    kept: int = 0  # outputs already there, digest-checked
    entries: list[dict[str, Any]] = field(default_factory=list)
    tiles: list[Path] = field(default_factory=list)


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(HASH_BLOCK):
            h.update(block)
    return h.hexdigest()


def check_continue_dir(out_dir: Path, job_id: str, force: bool) -> None:
    """DIR may be new, empty, or hold the results of this very job (its results.json)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise InvalidArgumentError("OUTPUT_EXISTS", f"{out_dir} exists and is not a directory")
    index = out_dir / "results.json"
    if index.is_file():
        try:
            recorded = json.loads(index.read_text()).get("job")
        except (json.JSONDecodeError, AttributeError, UnicodeDecodeError):
            recorded = None
        if recorded != job_id:
            raise InvalidArgumentError(
                "OUTPUT_EXISTS",
                f"{out_dir} holds the results of {'job ' + str(recorded) if recorded else 'something else'}"
                f", not of job {job_id}; choose another directory",
            )
        return
    if not force and out_dir.is_dir() and any(out_dir.iterdir()):
        raise InvalidArgumentError(
            "OUTPUT_EXISTS",
            f"{out_dir} holds files but no results.json of job {job_id}; choose a new "
            "directory, or pass --force to write into it",
        )


def destination(job: Job, result: TaskResult, name: str, out_dir: Path) -> Path | None:
    """Where an output goes (as `job results` writes it); None for a render output of an
    unexpected name."""
    if job.kind != "render":
        return out_dir / f"task_{result.index:05d}" / safe_name(name)
    if sdk_render.TILE_NAME.fullmatch(name):
        return out_dir / "tiles" / name
    if sdk_render.FRAME_NAME.fullmatch(name):
        return out_dir / name
    return None


def _fetch_output(client: Client, result: TaskResult, name: str, dest: Path) -> bool:
    """Writes one output unless it is there with the right digest; True if fetched."""
    ref = result.output_ref(name)
    if dest.is_file() and dest.stat().st_size == ref.size and file_digest(dest) == ref.digest:
        return False
    if ref.digest in result.inline_outputs:
        dest.parent.mkdir(parents=True, exist_ok=True)
        partial = dest.with_name(f".{dest.name}.inline.partial")
        partial.write_bytes(result.output(name))  # digest-checked
        os.replace(partial, dest)
    else:
        client.download(ref.digest, dest)  # digest-checked; resumes a partial file
    return True


def fetch_new(client: Client, job: Job, items: list[TaskResult], out_dir: Path) -> Fetched:
    done = Fetched()
    for result in items:
        if result.state is not TaskState.SUCCEEDED:
            done.entries.append(record(result, out_dir, {}, []))
            continue
        problems = problems_of(client, result)
        files: dict[str, str] = {}
        for ref in result.outputs:
            dest = destination(job, result, ref.name, out_dir)
            if dest is None:
                problems.append(f"unexpected output name {ref.name!r}")
                continue
            if problems:  # a receipt that does not verify: its outputs are not written
                continue
            if _fetch_output(client, result, ref.name, dest):
                done.new += 1
            else:
                done.kept += 1
            files[ref.name] = str(dest.relative_to(out_dir))
            if dest.parent.name == "tiles":
                done.tiles.append(dest)
        done.entries.append(record(result, out_dir, files, problems))
    return done


def write_index(out_dir: Path, job: Job, entries: list[dict[str, Any]]) -> None:
    index = {"job": job.id, "state": job.state.value, "results": entries}
    partial = out_dir / ".results.json.partial"
    partial.write_text(json.dumps(index, indent=2) + "\n")
    os.replace(partial, out_dir / "results.json")


def results_continue(args: argparse.Namespace) -> int:
    out_dir = Path(args.output)
    with common.client(args) as client:
        job = client.get_job(args.job_id)  # an unknown job fails here, before any write
        check_continue_dir(out_dir, job.id, args.force)
        items = client.results(job.id)
        out_dir.mkdir(parents=True, exist_ok=True)
        done = fetch_new(client, job, items, out_dir)
        complete = job.finished and all(e["state"] == "succeeded" for e in done.entries)
        if done.tiles and complete:
            still, note = stitch_still(done.tiles, out_dir)
            (output.note if still else output.hint)(note)
        write_index(out_dir, job, done.entries)
    succeeded = sum(1 for e in done.entries if e["state"] == "succeeded")
    bad = [e for e in done.entries if e["problems"] and e["state"] == "succeeded"]
    print(
        f"{done.new} new output(s) written to {out_dir}, {done.kept} already there "
        f"(digests checked); {succeeded} of {output.count(job.counts.total, 'task')} done"
    )
    for entry in bad:
        output.error(f"task {entry['task']} ({entry['task_id']}): {'; '.join(entry['problems'])}")
    if not job.finished:
        output.hint(
            f"job {job.id} is {job.state.value}: run this again to fetch what finishes next"
        )
    return 1 if bad else 0


def _frame_of(job: Job, number: int) -> tuple[TaskResult, str]:
    frames: list[int] = []
    for result in job.results():
        if result.state is not TaskState.SUCCEEDED:
            continue
        for ref in result.outputs:
            frame = sdk_render.frame_number(ref.name)
            if frame == number:
                return result, ref.name
            if frame is not None:
                frames.append(frame)
    if job.finished:  # it never will have that frame
        shown = ", ".join(str(f) for f in sorted(frames)[:20]) + (
            ", ..." if len(frames) > 20 else ""
        )
        raise InvalidArgumentError(
            "FRAME_NOT_FOUND",
            f"job {job.id} ended ({job.state.value}) without a frame {number}; its frames: "
            f"{shown or 'none'}",
        )
    raise InvalidArgumentError(
        "FRAME_NOT_READY",
        f"job {job.id} has no finished frame {number} yet; `sparegrid job results "
        f"{job.id} --continue -o DIR` lists the frames done so far",
    )


def _tiled(job: Job, still: str) -> None:
    output.error(
        f"job {job.id} renders one still in tiles, and a preview shows whole frames",
        "NO_FRAMES",
    )
    done = "once it has finished" if not job.finished else "now"
    output.hint(
        f"`sparegrid job results {job.id} -o DIR` stitches the tiles into DIR/{still} {done}"
    )


def _no_frame(job: Job, items: list[TaskResult]) -> int:
    """Why there is no frame to preview, and what to do: wait for a running job; a tiled
    still's tiles are not frames (its results stitch them); a job that ended has none."""
    tiles = [
        ref.name for r in items for ref in r.outputs if sdk_render.TILE_NAME.fullmatch(ref.name)
    ]
    if job.still or tiles:  # still: the coordinator says so before any tile is done
        _tiled(job, job.still or f"still{Path(tiles[0]).suffix}")
    elif job.finished:
        output.error(
            f"job {job.id} ended ({job.state.value}) without a finished frame", "NO_FRAMES"
        )
        if job.error:
            output.hint(f"why: {job.error}")
    else:
        output.error(f"job {job.id} has no finished frame yet", "FRAME_NOT_READY")
        output.hint(f"`sparegrid job wait {job.id}` follows it")
    return 1


def preview(args: argparse.Namespace) -> int:
    out = Path(args.output)
    if out.is_dir():
        raise InvalidArgumentError("BAD_OUTPUT", f"-o {out} is a directory; name a file")
    with common.client(args) as client:
        job = client.get_job(args.job_id)
        if job.kind != "render":
            raise InvalidArgumentError(
                "NOT_A_RENDER",
                f"job {job.id} is {output.a_or_an(job.kind)} job; only render jobs have frames",
            )
        if job.still:  # a tiled still: no frame, running or done
            _tiled(job, job.still)
            return 1
        if args.frame is not None:
            result, name = _frame_of(job, args.frame)
        else:
            items = job.results()
            found = sdk_render.latest_frame_ref(items)
            if found is None:
                return _no_frame(job, items)
            result, name = found
        problems = problems_of(client, result)
        if problems:
            output.error(f"frame {name} of job {job.id}: {'; '.join(problems)}", "BAD_RECEIPT")
            return 1
        data = result.output(name)  # digest-checked
    if Path(name).suffix != out.suffix:
        output.hint(f"the frame is {Path(name).suffix[1:].upper()}; written as-is to {out}")
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial")
    partial.write_bytes(data)
    os.replace(partial, out)
    print(f"{name} of job {job.id} (task {result.index}, node {result.node_id}) -> {out}")
    return 0
