"""A render job's results written to a folder: frames as frame_NNNN.ext, a tiled still's
tiles under tiles/ and stitched into still.ext, every receipt verified and kept under
receipts/, and results.json. `sparegrid job results` writes through here too."""

from pathlib import Path
from typing import Protocol

from sparegrid.sdk import render
from sparegrid.sdk.config import PathLike
from sparegrid.sdk.errors import VerificationError
from sparegrid.sdk.models import TaskState
from sparegrid.sdk.resultfiles import RenderFiles, check, record, stitch_still
from sparegrid.sdk.results import TaskResult


class AsyncFramesClient(Protocol):
    """What writing results needs of a client: blobs and the pinned coordinator key."""

    async def download(self, digest: str, dest: PathLike) -> Path: ...
    async def coordinator_key(self) -> bytes: ...


async def problems_of(client: AsyncFramesClient, result: TaskResult) -> list[str]:
    """Why a result cannot be trusted (empty: its receipt verifies)."""
    if result.state is not TaskState.SUCCEEDED:
        return [f"task {result.state.value}, no result to verify"]
    problem = check(result, await client.coordinator_key())
    return [problem] if problem is not None else []


async def write_render_results(
    client: AsyncFramesClient, items: list[TaskResult], out_dir: Path, shown: Path | None = None
) -> RenderFiles:
    """Frames as out_dir/frame_NNNN.ext (tiles under out_dir/tiles/, then stitched once
    every task succeeded), receipts under out_dir/receipts/. Every output is digest-checked
    as it is written; one that does not match is a problem of its task, and the others are
    still written. `shown` is the directory the user named, when out_dir is a staging
    directory renamed to it afterwards: paths and messages name where the files will be."""
    final = shown or out_dir
    entries = []
    frames: list[Path] = []
    tiles: list[Path] = []
    unwritten = 0  # tiles whose bytes did not match their digest
    for result in items:
        problems = await problems_of(client, result)
        files: dict[str, str] = {}
        for ref in result.outputs:
            is_tile = render.TILE_NAME.fullmatch(ref.name) is not None
            if not is_tile and render.FRAME_NAME.fullmatch(ref.name) is None:
                problems.append(f"unexpected output name {ref.name!r}")
                continue
            dest = out_dir / ("tiles" if is_tile else "") / ref.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                if ref.digest in result.inline_outputs:
                    dest.write_bytes(await result.output_async(ref.name))
                else:
                    await client.download(ref.digest, dest)
            except VerificationError as exc:
                problems.append(exc.message)
                unwritten += is_tile
                continue
            files[ref.name] = str(dest.relative_to(out_dir))
            (tiles if is_tile else frames).append(dest)
        entries.append(record(result, out_dir, files, problems))
    complete = all(e["state"] == "succeeded" for e in entries) and not unwritten
    still, note = None, ""
    if tiles and complete:
        still, note = stitch_still(tiles, out_dir, shown)
    return RenderFiles(
        final,
        entries,
        [final / p.relative_to(out_dir) for p in frames],
        [final / p.relative_to(out_dir) for p in tiles],
        final / still.relative_to(out_dir) if still else None,
        note,
    )
