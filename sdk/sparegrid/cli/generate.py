"""`sparegrid job submit generate ...`: a language model over an OpenAI Batch JSONL file."""

import argparse
import os
from pathlib import Path

from sparegrid.cli import common, costs, output
from sparegrid.cli.follow import follow
from sparegrid.sdk import InvalidArgumentError, Job, JobState


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


def batch_out(args: argparse.Namespace) -> int:
    """`job results J --batch-out FILE --model DIR --prompts JSONL`: what `submit --wait
    --out` would have written, for a submitter that did not stay (sparegrid.sdk.attach).
    As `job results` does, it does not wait for a running job: it says so and writes
    nothing, since a file of some completions would not be the job's output."""
    if args.output or args.resume or args.force:
        raise InvalidArgumentError(
            "BAD_FLAGS", "--batch-out writes one file: drop -o, --force and --continue"
        )
    if not (args.batch_out and args.model and args.prompts):
        raise InvalidArgumentError(
            "BAD_FLAGS",
            "--batch-out JSONL needs the job's --model DIR and --prompts JSONL (the "
            "completions are decoded here with its tokenizer, in its requests' order)",
        )
    out = Path(args.batch_out)
    check_out(out, wait=True)
    with common.client(args) as client:
        job = client.generate_attach(args.job_id, args.model, args.prompts)
        if job.state is not JobState.SUCCEEDED:
            raise _unfinished(job.job)
        # staged beside it, then linked into place: a failure leaves no partial file, and
        # a file made there meanwhile is not overwritten
        stage = out.with_name(f".{out.name}.{os.getpid()}.part")
        try:
            written = job.write_batch_output(stage)
            os.link(stage, out)
        except FileExistsError:
            raise InvalidArgumentError(
                "BAD_FLAGS", f"--batch-out {out} already exists; remove it or name another file"
            ) from None
        finally:
            stage.unlink(missing_ok=True)
    output.note(f"wrote {written} completions to {out}")
    return 0


def _unfinished(job: Job) -> InvalidArgumentError:
    if not job.finished:
        return InvalidArgumentError(
            "JOB_NOT_FINISHED",
            f"job {job.id} is still {job.state.value}: {job.counts.done} of "
            f"{output.count(job.counts.total, 'task')} are done; run this again once "
            f"`sparegrid job wait {job.id}` returns. Nothing was written",
        )
    why = f" ({job.error})" if job.error else ""
    return InvalidArgumentError(
        "JOB_NOT_FINISHED",
        f"job {job.id} {job.state.value}{why}: it has no complete Batch output. Nothing was "
        f"written; `sparegrid job results {job.id} -o DIR` writes the tasks that succeeded",
    )
