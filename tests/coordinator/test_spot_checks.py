"""Spot checks of rendered frames: a random crop, re-rendered by a node of another owner,
confirms or disputes a whole frame; a crop alone never stands for the task."""

import json
from pathlib import Path

import pytest

from sparegrid.coordinator.app import App
from sparegrid.coordinator.domain import Attempt, JobState, node_account
from sparegrid.v1 import common_pb2
from sparegrid.wire.receipt import verify_countersignature
from tests.coordinator.helpers import FakeNode
from tests.coordinator.spotting import (
    HEIGHT,
    SAMPLES,
    WIDTH,
    batch,
    report,
    run,
    setup,
)


def credit(app: App, node: FakeNode) -> int:
    return app.store.balance(node_account(node.id))


def crop_of(attempt: Attempt) -> tuple[list[int], list[int]]:
    """A spot check's frame and the box compared (the box rendered holds it)."""
    params = json.loads(attempt.params)
    return params["frames"], params.get("crop") or params["tile"]


def rendered_pixels(attempt: Attempt) -> int:
    x0, x1, y0, y1 = json.loads(attempt.params)["tile"]
    return (x1 - x0) * (y1 - y0)


def test_a_frame_is_checked_by_one_random_crop_and_both_nodes_are_paid(tmp_path: Path) -> None:
    app, job_id, (a, b) = setup(tmp_path, "o1", "o2")
    assert [x.params for x in run(a)] == [b"", b""]  # whole frames
    checks = run(b)
    assert len(checks) == 2
    for check, frame in zip(sorted(checks, key=crop_of), (1, 2), strict=True):
        frames, (x0, x1, y0, y1) = crop_of(check)
        assert frames == [frame]
        assert (x1 - x0, y1 - y0) == (16, 16)  # 1/16 of 64x48, at least 16 px a side
        assert x0 >= 0 and x1 <= WIDTH and y0 >= 0 and y1 <= HEIGHT
        # rendered with a margin for the denoiser, at most half the frame on one this small
        rx0, rx1, ry0, ry1 = json.loads(check.params)["tile"]
        assert rx0 <= x0 and x1 <= rx1 and ry0 <= y0 and y1 <= ry1
        assert 16 * 16 < rendered_pixels(check) <= WIDTH * HEIGHT // 2
    job = app.store.get_job(job_id)
    assert job is not None and job.state == JobState.SUCCEEDED
    whole = -(-WIDTH * HEIGHT * SAMPLES // 1000)
    crops = [-(-rendered_pixels(c) * SAMPLES // 1000) for c in checks]  # paid as rendered
    assert (credit(app, a), credit(app, b)) == (2 * whole, sum(crops))
    assert job.cost_spent == 2 * whole + sum(crops)
    assert app.store.balance("client:alice") == 10_000 - job.cost_spent
    for task in app.store.list_tasks(job_id):
        assert task.node_id == a.id
        assert [r.name for r in task.outputs] == [f"frame_{task.index + 1:04d}.png"]
        receipt = common_pb2.Receipt.FromString(task.receipt)
        validation = verify_countersignature(receipt, app.signer.public_key)
        assert validation.method == common_pb2.VALIDATION_METHOD_SPOT_CHECKED
        assert "16x16 crop of frame" in validation.detail
        assert sorted(validation.agreeing_nodes) == sorted([a.id, b.id])
    assert app.reputations.get(a.id).validated == 2
    assert app.ledger.check().balanced


def test_a_wrong_frame_is_caught_by_the_crop_and_a_third_owner_decides(tmp_path: Path) -> None:
    app, job_id, (a, b, c) = setup(tmp_path, "o1", "o2", "o3", frame_end=1)
    run(a, wrong=True)
    (check,) = run(b)
    assert check.params
    assert app.store.get_job(job_id).state == JobState.RUNNING  # type: ignore[union-attr]
    assert run(a) == run(b) == []  # neither owner gets the task again
    (tie_break,) = run(c)
    assert tie_break.params == b""  # the dispute is settled by a whole frame
    job = app.store.get_job(job_id)
    assert job is not None and job.state == JobState.SUCCEEDED
    (task,) = app.store.list_tasks(job_id)
    assert task.node_id == c.id  # the whole frame that agreed, never the crop
    assert credit(app, a) == 0 and app.reputations.get(a.id).strikes == 1
    assert credit(app, b) > 0 and credit(app, c) > credit(app, b)
    assert app.ledger.check().balanced


def test_a_checker_that_lies_about_its_crop_is_outvoted(tmp_path: Path) -> None:
    app, job_id, (a, b, c) = setup(tmp_path, "o1", "o2", "o3", frame_end=1)
    run(a)
    run(b, wrong=True)
    run(c)
    (task,) = app.store.list_tasks(job_id)
    assert task.node_id == a.id
    assert credit(app, b) == 0 and app.reputations.get(b.id).strikes == 1
    validation = verify_countersignature(
        common_pb2.Receipt.FromString(task.receipt), app.signer.public_key
    )
    assert sorted(validation.agreeing_nodes) == sorted([a.id, c.id])
    assert app.ledger.check().balanced


def test_a_tile_of_a_still_is_spot_checked_inside_its_own_box(tmp_path: Path) -> None:
    app, job_id, (a, b) = setup(tmp_path, "o1", "o2", frame_end=1, tiles=[2, 1])
    run(a)
    checks = run(b)
    tasks = {t.id: t for t in app.store.list_tasks(job_id)}
    for check in checks:
        tx0, tx1, ty0, ty1 = json.loads(tasks[check.task_id].params)["tile"]
        _, (x0, x1, y0, y1) = crop_of(check)
        assert tx0 <= x0 < x1 <= tx1 and ty0 <= y0 < y1 <= ty1
    assert app.store.get_job(job_id).state == JobState.SUCCEEDED  # type: ignore[union-attr]
    assert credit(app, b) > 0


def test_exr_frames_are_checked_whole(tmp_path: Path) -> None:
    app, job_id, (a, b) = setup(tmp_path, "o1", "o2", frame_end=1, format="exr")
    run(a)
    (check,) = run(b)
    assert check.params == b""  # no crop: EXR frames are compared bit for bit
    assert app.store.get_job(job_id).state == JobState.SUCCEEDED  # type: ignore[union-attr]
    assert credit(app, a) == credit(app, b)


def test_comparisons_are_made_ahead_and_settlement_finds_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The session handler has a batch's comparisons made in a worker thread before the
    batch is settled on the event loop; settlement then decodes nothing."""
    from sparegrid.coordinator.services.comparators import ImageComparator

    app, job_id, (a, b) = setup(tmp_path, "o1", "o2", frame_end=1)
    run(a)
    app.scheduler.grant(b.id, 0, 1)
    app.scheduler.dispatch()
    statements, inline = batch(b, b.sink.take())
    work = app.intake.comparisons(b.id, statements, inline)
    assert work is not None
    work()

    def decode_again(*args: object) -> bool:
        raise AssertionError("settlement compared the crop again")

    monkeypatch.setattr(ImageComparator, "compare_crop", decode_again)
    assert all(v.accepted for v in report(b, statements, inline))
    (task,) = app.store.list_tasks(job_id)
    validation = verify_countersignature(
        common_pb2.Receipt.FromString(task.receipt), app.signer.public_key
    )
    assert validation.method == common_pb2.VALIDATION_METHOD_SPOT_CHECKED


def test_bytes_that_do_not_match_their_digest_never_answer_a_comparison(tmp_path: Path) -> None:
    """A node names the digest of a junk crop but sends the honest crop's bytes under it:
    the answer worked out ahead must not let the junk through when it comes for real."""
    app, job_id, (a, b) = setup(tmp_path, "o1", "o2", frame_end=1)
    run(a)
    app.scheduler.grant(b.id, 0, 1)
    app.scheduler.dispatch()
    items = b.sink.take()
    _, honest = batch(b, items)
    junk_statements, junk = batch(b, items, wrong=True)
    swapped = dict(zip(junk, honest.values(), strict=True))  # junk digest -> honest bytes
    work = app.intake.comparisons(b.id, junk_statements, swapped)
    assert work is not None
    work()  # worked out ahead for a batch that carries the honest bytes
    # the junk then comes for real, with its own bytes (sent with the honest ones it is
    # refused, BAD_OUTPUT, and its attempt ends): it is compared on what it is
    assert all(v.accepted for v in report(b, junk_statements, junk))
    assert app.store.get_job(job_id).state == JobState.RUNNING  # type: ignore[union-attr]
    assert credit(app, b) == 0  # disputed: a third owner must decide


def test_a_frame_confirmed_only_by_a_crop_never_becomes_a_known_answer(tmp_path: Path) -> None:
    """Pixels outside the crop were never checked: a canary built on the frame could fail
    an honest node."""
    from sparegrid.coordinator.services.canaries import CanaryConfig

    app, job_id, (a, b) = setup(tmp_path, "o1", "o2", frame_end=1)
    app.canaries.config = CanaryConfig(rate=1.0)
    run(a)
    run(b)
    assert app.store.get_job(job_id).state == JobState.SUCCEEDED  # type: ignore[union-attr]
    assert [j.id for j in app.store.list_jobs()] == [job_id]  # no canary job was made
