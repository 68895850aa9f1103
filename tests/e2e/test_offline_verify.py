"""`sparegrid job verify --dir DIR` checks, with no coordinator to ask, what `job results`
wrote: every receipt, the coordinator's countersignature against the pinned key, and the
output files still on disk; a changed file or receipt is named and exits 1."""

from pathlib import Path

import pytest

from tests.e2e.helpers import client_env, run_cli, setup

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


def test_a_results_directory_is_verified_offline(cluster, tmp_path: Path) -> None:
    _, client = setup(cluster, workers=1)
    env = client_env(cluster, client.connection.api_key)
    job = client.echo("frame", tasks=3).wait(timeout=60)
    out = tmp_path / "out"
    fetched = run_cli(env, "job", "results", job.id, "-o", str(out))
    assert fetched.returncode == 0, fetched.stderr
    cluster.stop_all()  # offline: nothing answers at the coordinator's address now

    ok = run_cli(env, "job", "verify", "--dir", str(out))
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout == f"job {job.id}: 3 receipts verified offline, 0 failed\n"
    assert "countersignatures checked against the key in" in ok.stderr

    (out / "task_00001" / "out").write_bytes(b"fraud")
    receipt = out / "receipts" / "task_00002.receipt"
    receipt.write_bytes(receipt.read_bytes()[:-1] + bytes([receipt.read_bytes()[-1] ^ 1]))
    bad = run_cli(env, "job", "verify", "--dir", str(out))
    assert bad.returncode == 1
    assert "1 receipt verified offline, 2 failed" in bad.stdout
    assert "task 1 " in bad.stderr and "task_00001/out has SHA-256" in bad.stderr
    assert "task 2 " in bad.stderr and "Traceback" not in bad.stderr

    unpinned = run_cli(env, "job", "verify", "--dir", str(out), "--coordinator", "127.0.0.1:9")
    assert "countersignatures were not checked: no key is pinned for 127.0.0.1:9" in (
        unpinned.stderr
    )
    nothing = run_cli(env, "job", "verify", "--dir", str(tmp_path))
    assert nothing.returncode == 1 and "[NOT_A_RESULTS_DIR]" in nothing.stderr
    neither = run_cli(env, "job", "verify")
    assert neither.returncode == 1 and "give a JOB_ID, or --dir DIR" in neither.stderr
