"""The data directory of a running coordinator is removed (an `rm -rf` in the wrong
place, a tmp cleaner). On SQLite the coordinator acknowledges nothing more, since all it
committed would vanish when it exits: submits are refused, saying why; results stay in
the workers' outboxes. On PostgreSQL the database is safe but the blobs are gone: an
upload is refused, saying so. Real processes."""

import shutil

import pytest

from sparegrid.sdk import UnavailableError
from tests.e2e.helpers import setup, wait_for

pytestmark = pytest.mark.e2e


def test_a_removed_data_directory_is_refused_not_written_into(cluster) -> None:
    _, client = setup(cluster, workers=1)
    job = client.echo("x", tasks=40, sleep_ms=200)
    wait_for(lambda: client.get_job(job.id).counts.succeeded >= 2, what="some progress")
    data = cluster.root / "coord"
    shutil.rmtree(data)

    with pytest.raises(UnavailableError) as refused:
        client.echo("lost?", tasks=1)
    assert refused.value.code == "STORE_UNAVAILABLE"
    assert f"the database file {data / 'coordinator.db'} was removed" in refused.value.message
    assert "restore the data directory from a backup and restart" in refused.value.message
    assert cluster.coordinator.popen.poll() is None  # up, holding what it has
    assert "was removed or replaced" in cluster.coordinator.tail()


def test_a_removed_blob_directory_is_named_to_uploaders(cluster, database) -> None:
    _, dsn = database
    _, client = setup(cluster, workers=0, extra=("--database", dsn))
    shutil.rmtree(cluster.root / "coord")

    with pytest.raises(UnavailableError) as refused:
        client.upload(b"after the rm")
    assert refused.value.code == "BLOB_STORE_UNAVAILABLE"
    blobs = cluster.root / "coord" / "blobs"
    assert f"the coordinator's blob directory {blobs} is gone" in refused.value.message
    assert client.echo("the database is fine", tasks=1).id  # what needs no blob goes on
