"""The coordinator's disk fills up while a client uploads: the upload is refused, saying
so, and what it had written is dropped, so the database on the same disk keeps taking
writes and jobs keep running; once there is room the upload goes through. Real
processes, the data directory on a small tmpfs (root only: skipped elsewhere)."""

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from sparegrid.sdk import ResourceExhaustedError
from tests.e2e.helpers import setup

pytestmark = pytest.mark.e2e


@pytest.fixture
def small_disk(cluster, tmp_path: Path) -> Iterator[Path]:
    """The coordinator's data directory, on a 48 MiB filesystem of its own."""
    data = tmp_path / "coord"
    data.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(data)]
    if os.geteuid() != 0 or subprocess.run(mount, capture_output=True).returncode != 0:
        pytest.skip("mounting a small tmpfs needs root")
    try:
        yield data
    finally:
        cluster.stop_all()
        subprocess.run(["umount", "-l", str(data)], check=True)


def test_an_upload_that_fills_the_disk_is_refused_and_jobs_go_on(cluster, small_disk) -> None:
    admin, client = setup(cluster, workers=1)
    filler = small_disk / "filler"
    filler.write_bytes(bytes(44 << 20))  # about 3 MiB left

    with pytest.raises(ResourceExhaustedError) as full:
        client.upload(os.urandom(8 << 20))
    assert full.value.code == "DISK_FULL"
    assert "the coordinator's disk is full" in full.value.message
    assert not list((small_disk / "blobs" / "partial").iterdir())  # the room is given back

    job = client.echo("still here", tasks=2).wait(timeout=30)
    assert job.state == "succeeded"

    filler.unlink()
    data = os.urandom(8 << 20)
    digest = client.upload(data)
    assert (small_disk / "blobs" / "sha256" / digest[:2] / digest).read_bytes() == data
    assert admin.ledger_check().balanced
