"""`sparegrid job submit render ...` options. Render results are written as frame_NNNN
files by the SDK (`Job.write_frames`, sparegrid.sdk._async.frames), for the CLI too."""

import argparse
from pathlib import Path

from sparegrid.cli import common, output
from sparegrid.cli.follow import follow
from sparegrid.sdk import InvalidArgumentError


def add_submit_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("render jobs (KIND render)")
    g.add_argument("--blend", metavar="FILE", help="the scene (.blend); external files are packed")
    g.add_argument(
        "--frames",
        metavar="A-B[:STEP]",
        help="frames to render, or an evenly spaced list 1,3,5 (the scene's range)",
    )
    g.add_argument("--samples", type=int, metavar="N", help="Cycles samples (the scene's)")
    g.add_argument("--resolution", metavar="WxH", help="e.g. 1920x1080 (the scene's)")
    g.add_argument("--format", metavar="png|exr", help="png or exr (png)")
    g.add_argument("--depth", type=int, metavar="BITS", help="png: 8 or 16; exr: 16 or 32")
    g.add_argument("--tiles", metavar="NxM", help="split one still frame into NxM tiles")
    g.add_argument("--chunk", type=int, metavar="N", help="frames per task (1)")
    g.add_argument("--blender", metavar="MAJOR.MINOR", help="only nodes with this Blender")
    g.add_argument("--backend", metavar="optix|cuda|cpu", help="with --blender: only nodes with it")


# `job submit` options only render jobs read, and those they do not: given to the other
# kind, either would be dropped without a word, and the job would not be the one asked for
RENDER_FLAGS: tuple[str, ...] = ("blend", "frames", "samples", "resolution", "format", "depth")
RENDER_FLAGS += ("tiles", "chunk", "blender", "backend")
NOT_RENDER_FLAGS: tuple[str, ...] = ("tasks", "input", "data", "sleep_ms", "params")


def _given(args: argparse.Namespace, names: tuple[str, ...]) -> list[str]:
    return [f"--{n.replace('_', '-')}" for n in names if getattr(args, n, None) not in (None, [])]


def check_flags(args: argparse.Namespace) -> None:
    """Refuses a flag of render jobs on another kind's submit, and the reverse."""
    if args.kind == "render":
        stray = _given(args, NOT_RENDER_FLAGS)
        if stray:
            raise InvalidArgumentError(
                "BAD_FLAGS",
                f"render jobs do not use {', '.join(stray)}: the scene is --blend FILE, and "
                "--frames, --chunk or --tiles make its tasks",
            )
    else:
        stray = _given(args, RENDER_FLAGS)
        if stray:
            raise InvalidArgumentError(
                "BAD_FLAGS",
                f"{', '.join(stray)} {'is' if len(stray) == 1 else 'are'} for render jobs "
                f"(`job submit render`); {output.a_or_an(args.kind)} job does not use "
                f"{'it' if len(stray) == 1 else 'them'}",
            )


def submit(args: argparse.Namespace) -> int:
    if not args.blend:
        raise InvalidArgumentError("BAD_INPUT", "a render job needs --blend FILE (the scene)")
    args.format = "png" if args.format is None else args.format
    args.chunk = 1 if args.chunk is None else args.chunk
    blend = Path(args.blend)
    with common.client(args) as client:
        if args.dry_run:
            with output.transfer(f"upload scene ({blend.name})", _size(blend)) as progress:
                found = client.render_estimate(
                    blend,
                    args.frames,
                    args.samples,
                    args.resolution,
                    format=args.format,
                    depth=args.depth,
                    tiles=args.tiles,
                    chunk=args.chunk,
                    blender=args.blender,
                    backend=args.backend,
                    name=args.name,
                    max_attempts=args.max_attempts,
                    replicas=args.replicas,
                    quorum=args.quorum,
                    priority=args.priority,
                    webhook_url=args.webhook,
                    on_upload=progress,
                )
            from sparegrid.cli import costs

            return costs.show_estimate(found, args.json)
        with output.transfer(f"upload scene ({blend.name})", _size(blend)) as progress:
            job = client.render(
                blend,
                args.frames,
                args.samples,
                args.resolution,
                format=args.format,
                depth=args.depth,
                tiles=args.tiles,
                chunk=args.chunk,
                blender=args.blender,
                backend=args.backend,
                name=args.name,
                max_attempts=args.max_attempts,
                replicas=args.replicas,
                quorum=args.quorum,
                priority=args.priority,
                webhook_url=args.webhook,
                keep_logs=args.keep_logs,
                on_upload=progress,
            )
        print(job.id, flush=True)
        output.note(
            f"submitted render job {job.id}: {output.count(job.counts.total, 'task')}, "
            f"{job.cost_held} credit held"
        )
        if args.wait:
            return follow(job, args.timeout, summary=output.err())
    return 0


def _size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else 0
