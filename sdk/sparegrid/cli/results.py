"""Writing a job's results to a directory: outputs checked against their digests, receipts
verified. The index, the staging and render jobs' frames are the SDK's
(sparegrid.sdk.resultfiles, sparegrid.sdk._sync.frames), shared with `Job.write_frames`."""

from pathlib import Path
from typing import Any

from sparegrid.sdk import Client, TaskResult, VerificationError
from sparegrid.sdk._sync.frames import problems_of
from sparegrid.sdk.resultfiles import record, safe_name

__all__ = ["problems_of", "record", "safe_name", "write_outputs", "write_result"]


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


def write_result(client: Client, result: TaskResult, out_dir: Path) -> dict[str, Any]:
    problems = problems_of(client, result)
    files = write_outputs(client, result, out_dir / f"task_{result.index:05d}", problems)
    return record(result, out_dir, files, problems)
