"""The data directory of a running coordinator is removed (an `rm -rf` in the wrong
place, a tmp cleaner): the coordinator acknowledges nothing more, since all it committed
would vanish when it exits. Submits are refused, saying why; results stay in the
workers' outboxes. Real processes, SQLite."""

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
