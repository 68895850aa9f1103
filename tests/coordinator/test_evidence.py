"""Every comparison the verifier makes leaves its evidence: which crop or tensor, which
metric, which rule. A disagreement is logged with it."""

import json
import logging
from pathlib import Path

import pytest

from sparegrid.coordinator.services.framecheck import CROP_DENOISED
from tests.coordinator.spotting import run, setup


def test_a_disputed_frame_keeps_the_evidence_of_its_crop(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app, job_id, (a, b, _) = setup(tmp_path, "o1", "o2", "o3", frame_end=1)
    run(a, wrong=True)
    with caplog.at_level(logging.INFO, logger="sparegrid.coordinator.verification"):
        (check,) = run(b)
    (task,) = app.store.list_tasks(job_id)
    whole, crop = sorted(app.store.get_replicas([task.id]), key=lambda r: bool(r.params))
    found = app.verifier.evidence(task, crop, whole)  # either order
    assert found is not None and not found.agree
    params = json.loads(check.params)
    assert found.metrics["box"] == params["crop"] and found.metrics["rendered"] == params["tile"]
    assert found.metrics["frame"] == 1 and found.metrics["failed"] == "psnr"
    assert found.metrics["rule"] == CROP_DENOISED  # the crop did not say: the loosest
    assert found.metrics["psnr"] < 20
    assert found.detail.startswith(f"crop {params['crop']} of frame 1: PSNR ")
    assert any("disagree" in r.message and found.detail in r.message for r in caplog.records)


def test_an_agreement_keeps_its_evidence_too(tmp_path: Path) -> None:
    app, job_id, (a, b) = setup(tmp_path, "o1", "o2", frame_end=1)
    run(a)
    run(b)
    (task,) = app.store.list_tasks(job_id)
    whole, crop = sorted(app.store.get_replicas([task.id]), key=lambda r: bool(r.params))
    found = app.verifier.evidence(task, whole, crop)
    assert found is not None and found.agree
    assert found.metrics["psnr"] == float("inf") and "box" in found.metrics
