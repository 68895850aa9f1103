"""`job verify --dir DIR`: checks, without asking the coordinator, the results `job results`
wrote to DIR: each receipt (Merkle path, the node's signature, the job, task and node it
names), the coordinator's countersignature against the key pinned for its address, and
that every output file there still has the digest and size its receipt states."""

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf.message import DecodeError

from sparegrid.cli import output
from sparegrid.cli.fetch import file_digest
from sparegrid.sdk import InvalidArgumentError, TaskResult, TaskState, VerificationError
from sparegrid.sdk.config import ENV_COORDINATOR_KEY, coordinator_key_paths
from sparegrid.sdk.models import OutputRef
from sparegrid.v1 import common_pb2


@dataclass
class DirReport:
    job_id: str
    ok: int = 0
    skipped: int = 0
    failures: list[str] = field(default_factory=list)


def pinned_key(address: str, env: dict[str, str]) -> tuple[bytes | None, str]:
    """The coordinator key to check countersignatures with, and where it came from:
    SPAREGRID_COORDINATOR_KEY (hex), else the key pinned for `address`; None when neither."""
    sources = [(ENV_COORDINATOR_KEY, env.get(ENV_COORDINATOR_KEY, ""))]
    sources += [(str(p), p.read_text()) for p in coordinator_key_paths(address, env) if p.exists()]
    for source, text in sources:
        if text.strip():
            try:
                return bytes.fromhex(text.strip()), source
            except ValueError:
                raise VerificationError(
                    f"{source} is not a hex Ed25519 public key", "BAD_COORDINATOR_KEY"
                ) from None
    return None, ""


def verify_dir(out_dir: Path, coordinator_key: bytes | None) -> DirReport:
    index = _index(out_dir)
    report = DirReport(job_id=str(index.get("job", "")))
    for entry in index.get("results", []):
        if entry.get("state") != TaskState.SUCCEEDED.value:
            report.skipped += 1
            continue
        label = f"task {entry.get('task')} ({entry.get('task_id')})"
        try:
            _check_entry(out_dir, report.job_id, entry, coordinator_key)
        except VerificationError as exc:
            message = exc.message
            report.failures.append(
                message if message.startswith("task ") else f"{label}: {message}"
            )
        else:
            report.ok += 1
    return report


def _index(out_dir: Path) -> dict[str, Any]:
    path = out_dir / "results.json"
    try:
        index = json.loads(path.read_text())
    except FileNotFoundError:
        raise InvalidArgumentError(
            "NOT_A_RESULTS_DIR",
            f"{path} does not exist; --dir takes a directory `sparegrid job results` wrote",
        ) from None
    except (OSError, ValueError) as exc:
        raise InvalidArgumentError("NOT_A_RESULTS_DIR", f"cannot read {path}: {exc}") from None
    if not isinstance(index, dict) or not isinstance(index.get("results"), list):
        raise InvalidArgumentError("NOT_A_RESULTS_DIR", f"{path} is not a results index")
    return index


def _check_entry(
    out_dir: Path, job_id: str, entry: dict[str, Any], coordinator_key: bytes | None
) -> None:
    outputs = [OutputRef(o["name"], o["digest"], int(o["size"])) for o in entry["outputs"]]
    result = TaskResult(
        job_id=job_id,
        task_id=entry["task_id"],
        index=int(entry["task"]),
        state=TaskState.SUCCEEDED,
        node_id=entry["node"],
        outputs=outputs,
        receipt=_receipt(out_dir, entry.get("receipt")),
    )
    result.verify(coordinator_key=coordinator_key)
    for ref, meta in zip(outputs, entry["outputs"], strict=True):
        if meta.get("file"):
            _check_file(out_dir / meta["file"], ref)


def _receipt(out_dir: Path, name: str | None) -> common_pb2.Receipt | None:
    if not name:
        return None
    try:
        return common_pb2.Receipt.FromString((out_dir / name).read_bytes())
    except FileNotFoundError:
        raise VerificationError(f"its receipt {name} is missing") from None
    except DecodeError:
        raise VerificationError(f"its receipt {name} is not a receipt") from None


def _check_file(path: Path, ref: OutputRef) -> None:
    if not path.is_file():
        raise VerificationError(f"output {ref.name!r}: {path} is missing")
    digest, size = file_digest(path), path.stat().st_size
    if (digest, size) != (ref.digest, ref.size):
        raise VerificationError(
            f"output {ref.name!r}: {path} has SHA-256 {digest[:16]}… ({size} bytes), the "
            f"receipt states {ref.digest[:16]}… ({ref.size} bytes)"
        )


def report(out_dir: Path, address: str) -> int:
    """Prints what `verify_dir` found; 0 when every result checks out."""
    key, source = pinned_key(address, dict(os.environ))
    checked = verify_dir(out_dir, key)
    skipped = f" ({output.count(checked.skipped, 'task')} without a result skipped)"
    print(
        f"job {checked.job_id}: {output.count(checked.ok, 'receipt')} verified offline, "
        f"{len(checked.failures)} failed" + (skipped if checked.skipped else "")
    )
    if key is None:
        output.note(
            f"the coordinator's countersignatures were not checked: no key is pinned for "
            f"{address} (pass --coordinator, or set {ENV_COORDINATOR_KEY} to its key in hex)"
        )
    else:
        output.note(f"countersignatures checked against the key in {source}")
    for failure in checked.failures:
        output.error(failure)
    return 0 if not checked.failures else 1
