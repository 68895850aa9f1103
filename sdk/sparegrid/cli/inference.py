"""`sparegrid job submit inference ...` options, and the merged outputs of `job results`."""

import argparse
from pathlib import Path
from typing import Any

from sparegrid.cli import output
from sparegrid.sdk import Client, InvalidArgumentError, Job, TaskResult, TaskState
from sparegrid.sdk.inference import PRECISIONS, check_options

MERGED = "outputs.safetensors"


def add_submit_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("inference jobs (KIND = inference)")
    group.add_argument(
        "--model", metavar="PT2", help="the program (torch.export.save); generate: a model DIR"
    )
    group.add_argument(
        "--inputs",
        metavar="PATH",
        help="inputs by the program's input names: a safetensors file, a folder of them "
        "(joined in file-name order), or a Parquet or Arrow table (a column per input)",
    )
    group.add_argument("--batch-size", type=int, default=64, metavar="N", help="batch size (64)")
    group.add_argument("--precision", choices=PRECISIONS, default="fp32", help="(fp32)")
    group.add_argument(
        "--deterministic", action="store_true", help="deterministic kernels on the worker"
    )
    group.add_argument(
        "--compile", action="store_true", help="workers compile the program (slow once, then fast)"
    )
    group.add_argument("--min-vram", type=float, default=0, metavar="GB", help="per device")
    group.add_argument("--device", choices=("cpu", "cuda"), default="", help="(any)")
    group.add_argument(
        "--shard-batches", type=int, metavar="N", help="batches per task (sized by default)"
    )


def check_args(args: argparse.Namespace) -> None:
    """What can be checked here, before connecting to anything."""
    if not args.model or not args.inputs:
        raise InvalidArgumentError(
            "BAD_PARAMS", "an inference job needs --model PT2 and --inputs PATH"
        )
    if not Path(args.model).is_file():
        raise InvalidArgumentError("BAD_INPUT", f"--model: no such file {args.model}")
    if not Path(args.inputs).exists():
        raise InvalidArgumentError("BAD_INPUT", f"--inputs: no such file or folder {args.inputs}")
    check_options(args.precision, args.batch_size, args.min_vram, args.shard_batches)


def submit(client: Client, args: argparse.Namespace) -> Job:
    output.note(f"checking and uploading {args.model} and the shards of {args.inputs}")
    return client.infer(
        Path(args.model),
        Path(args.inputs),
        batch_size=args.batch_size,
        precision=args.precision,
        deterministic=args.deterministic,
        compile=args.compile,
        min_vram_gb=args.min_vram,
        device=args.device,
        shard_batches=args.shard_batches,
        name=args.name,
        replicas=args.replicas,
        quorum=args.quorum,
        max_attempts=args.max_attempts,
        priority=args.priority,
        webhook_url=args.webhook,
        keep_logs=args.keep_logs,
    ).job


def write_merged(results: list[TaskResult], out_dir: Path) -> str | None:
    """All shards' outputs in input order as one safetensors file; None with a reason noted."""
    if not results or any(r.state is not TaskState.SUCCEEDED for r in results):
        output.hint(f"not every shard succeeded: no merged {MERGED}")
        return None
    try:
        from safetensors.torch import save_file

        from sparegrid.sdk.inference import concat, decode
    except ImportError:
        output.hint(f"install torch to get the merged {MERGED} (each task's file is written)")
        return None
    shards = [decode(r) for r in sorted(results, key=lambda r: r.index)]
    merged: Any = concat([s.outputs for s in shards])
    from torch.utils import _pytree as pytree

    leaves, spec = pytree.tree_flatten(merged)
    tensors = {f"output_{i}": t.contiguous() for i, t in enumerate(leaves)}
    save_file(tensors, str(out_dir / MERGED), metadata={"treespec": pytree.treespec_dumps(spec)})
    return MERGED
