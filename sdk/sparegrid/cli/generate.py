"""`sparegrid job submit generate ...`: a language model over an OpenAI Batch JSONL file."""

import argparse
from pathlib import Path

from sparegrid.cli import common, costs, output
from sparegrid.cli.follow import follow
from sparegrid.sdk import InvalidArgumentError


def add_submit_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "generate jobs (KIND = generate; --model DIR, --precision, --device as above)"
    )
    group.add_argument("--prompts", metavar="JSONL", help="OpenAI Batch requests, one a line")
    group.add_argument("--max-tokens", type=int, default=256, metavar="N", help="(256)")
    group.add_argument("--temperature", type=float, default=0.0, help="0: greedy (0)")
    group.add_argument("--seed", type=int, default=0, help="sampling seed (0)")
    group.add_argument(
        "--task-tokens", type=int, metavar="N", help="prompt + generated tokens per task"
    )
    group.add_argument(
        "--out", metavar="JSONL", help="with --wait: write the OpenAI Batch output here"
    )


def check_out(out: Path, wait: bool) -> None:
    """--out is checked before anything is submitted: finding it unusable only once the
    job has run and been paid for would lose the completions or someone's file."""
    if not wait:
        raise InvalidArgumentError(
            "BAD_FLAGS",
            "--out is written as the job ends, decoded here with the model's tokenizer: "
            "add --wait (or use the SDK's GenerateJob.write_batch_output)",
        )
    if out.exists() or out.is_symlink():
        raise InvalidArgumentError(
            "BAD_FLAGS", f"--out {out} already exists; remove it or name another file"
        )
    if not out.parent.is_dir():
        raise InvalidArgumentError("BAD_FLAGS", f"--out {out}: no such folder {out.parent}")


def submit(args: argparse.Namespace) -> int:
    if not args.model or not args.prompts:
        raise InvalidArgumentError(
            "BAD_PARAMS", "a generate job needs --model DIR and --prompts JSONL"
        )
    if not Path(args.prompts).is_file():
        raise InvalidArgumentError("BAD_INPUT", f"--prompts: no such file {args.prompts}")
    if args.out and args.dry_run:
        raise InvalidArgumentError("BAD_FLAGS", "--dry-run submits nothing: drop --out")
    if args.out:
        check_out(Path(args.out), args.wait)
    precision = args.precision if args.precision != "tf32" else "fp32"
    options = {
        "max_tokens": args.max_tokens,
        "temperature": args.temperature,
        "seed": args.seed,
        "precision": precision,
        "device": args.device,
        "min_vram_gb": args.min_vram,
        "task_tokens": args.task_tokens,
        "name": args.name,
        "replicas": args.replicas,
        "quorum": args.quorum,
    }
    with common.client(args) as client:
        output.note(f"checking {args.model}, tokenizing {args.prompts} and uploading")
        if args.dry_run:
            found = client.generate_estimate(args.model, args.prompts, **options)
            return costs.show_estimate(found, args.json)
        job = client.generate(args.model, args.prompts, keep_logs=args.keep_logs, **options)
        print(job.id, flush=True)
        output.note(
            f"submitted generate job {job.id}: {output.count(job.job.counts.total, 'task')}; "
            f"{job.price_text()}"
        )
        if not args.wait:
            return 0
        status = follow(job.job, args.timeout, summary=output.err())
        if status == 0 and args.out:
            written = job.write_batch_output(Path(args.out), timeout=args.timeout)
            output.note(f"wrote {written} completions to {args.out}")
        return status
