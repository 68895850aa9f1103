"""The storage sweeps on the in-memory store with a fake clock: what a walk in steps must
not get wrong while jobs change under it."""

import hashlib
from pathlib import Path

from sparegrid.coordinator.app import App
from sparegrid.coordinator.domain import FileRef, TaskState
from sparegrid.coordinator.services.sweeper import DAY, SweepConfig, Swept
from tests.coordinator.helpers import echo, make_app, make_client


def stored(app: App, data: bytes, at: float) -> str:
    """A blob on disk, recorded as last used at `at`."""
    digest = hashlib.sha256(data).hexdigest()
    path = app.blobs.path(digest)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    app.store.record_blob(digest, len(data), now=at)
    return digest


def run(app: App) -> Swept:
    swept = Swept()
    for _ in app.sweeper.collect_blobs(swept):
        pass
    return swept


def test_a_job_retried_during_the_walk_keeps_its_outputs(tmp_path: Path) -> None:
    """A cancelled job's outputs are collected once it ended a retention ago; retried
    meanwhile, it is live again, and a walk that began before the retry must not delete
    what its finished tasks returned."""
    app = make_app(tmp_path, sweeps=SweepConfig(page=2))
    alice = make_client(app)
    job_id = echo(app, alice, tasks=2)
    app.jobs.cancel(alice, job_id)
    output = stored(app, b"output of task 0", at=app.clock.now())
    task = app.store.list_tasks(job_id)[0]  # it had succeeded before the cancel
    task.state, task.outputs = TaskState.SUCCEEDED, [FileRef("out", output, 16)]
    app.store.update_tasks([task])
    app.clock.advance(4 * DAY)  # type: ignore[attr-defined]
    echo(app, alice, tasks=1)  # a live job, for the walk to step through
    swept = Swept()
    steps = app.sweeper.collect_blobs(swept)
    next(steps)
    app.retries.retry(alice, job_id)
    for _ in steps:
        pass
    assert swept.blobs == 0 and app.blobs.size(output) == 16
    app.jobs.cancel(alice, job_id)
    app.clock.advance(4 * DAY)  # type: ignore[attr-defined]
    assert run(app).blobs == 1 and app.blobs.size(output) is None


def test_many_candidates_are_collected_in_steps(tmp_path: Path) -> None:
    app = make_app(tmp_path, sweeps=SweepConfig(page=3))
    old = app.clock.now()
    digests = [stored(app, bytes([i]) * 10, at=old) for i in range(10)]
    app.clock.advance(3 * DAY + 1)  # type: ignore[attr-defined]
    keep = stored(app, b"fresh", at=app.clock.now())
    swept = run(app)
    assert (swept.blobs, swept.blob_bytes) == (10, 100)
    assert all(app.blobs.size(d) is None for d in digests) and app.blobs.size(keep) == 5
    assert sorted(p.name for p in (app.blobs.root / "trash").iterdir()) == sorted(digests)
    assert app.blobs.empty_trash() == 100


def test_files_stored_before_blobs_were_recorded_are_adopted_then_collected(
    tmp_path: Path,
) -> None:
    app = make_app(tmp_path)
    digest = hashlib.sha256(b"legacy").hexdigest()
    path = app.blobs.path(digest)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"legacy")
    assert run(app).blobs == 0  # unknown to the store: never a candidate on its own
    assert app.sweeper.adopt(app.blobs.stored()) == 1
    assert app.sweeper.adopt(app.blobs.stored()) == 0
    app.clock.advance(3 * DAY + path.stat().st_mtime - app.clock.now() + 1)  # type: ignore[attr-defined]
    assert run(app).blobs == 1 and not path.exists()
