"""A coordinator process whose blobs are in an S3-compatible bucket (moto's standalone
server), with real workers: a job's input goes to the bucket, the workers read it back
through the coordinator, their outputs go to the bucket, and the client fetches them; a
restarted coordinator finds the input there."""

import hashlib
import os
from pathlib import Path

import pytest

from tests.conftest import S3Server
from tests.e2e.helpers import setup

pytestmark = pytest.mark.e2e


def test_a_job_runs_with_its_blobs_in_a_bucket(cluster, s3: S3Server, tmp_path: Path) -> None:
    bucket = s3.bucket()
    cluster.env.update(s3.env)
    admin, client = setup(cluster, workers=2, extra=("--blobs", f"s3://{bucket}/grid"))
    data = os.urandom(5 << 20 | 77)
    path = tmp_path / "input.bin"
    path.write_bytes(data)
    job = client.checksum(path, tasks=4).wait(timeout=60)
    assert job.state == "succeeded"
    for r in job.results():
        r.verify()
        lo, hi = r.index * len(data) // 4, (r.index + 1) * len(data) // 4
        assert r.output("sha256").decode() == hashlib.sha256(data[lo:hi]).hexdigest()

    text = "é" * 40_000  # 80,000 bytes: past a worker's inline limit, so a blob
    echoed = client.echo(text, tasks=1).wait(timeout=60)
    assert echoed.state == "succeeded"
    (result,) = echoed.results()
    result.verify()
    assert result.output("out") == text.encode()

    # a coordinator started again knows nothing of the bucket but what it finds there
    cluster.kill(cluster.coordinator)
    cluster.start_coordinator("--blobs", f"s3://{bucket}/grid")
    again = client.checksum(path, tasks=2).wait(timeout=60)
    assert again.state == "succeeded"
    halves = sorted(r.output("sha256").decode() for r in again.results())
    mid = len(data) // 2
    assert halves == sorted(hashlib.sha256(h).hexdigest() for h in (data[:mid], data[mid:]))

    stored = {key.rpartition("/")[2] for key in s3.keys(bucket, "grid/sha256/")}
    assert hashlib.sha256(data).hexdigest() in stored
    assert hashlib.sha256(text.encode()).hexdigest() in stored
    assert not (cluster.root / "coord" / "blobs" / "sha256").exists()
    assert admin.ledger_check().balanced
