"""Task logs from a real worker and its sandboxed child: what the executor wrote, its
paths redacted, signed; a failure's always, a result's only when the job asks."""

import hashlib
from pathlib import Path

import pytest

from sparegrid.v1 import common_pb2
from sparegrid.wire.tasklog import MAX_LOG_BYTES, SUCCEEDED, verify_log
from sparegrid.worker.slots.child.logfile import Redactor
from sparegrid.worker.testing.coordinator import FakeCoordinator
from sparegrid.worker.testing.harness import assignment, make_config, running_worker


def chatty(attempt_id: str, digest: str, size: int, **params: object):  # type: ignore[no-untyped-def]
    return assignment(attempt_id, kind="chatty", params=params, inputs={"data": (digest, size)})


async def test_a_failed_tasks_log_holds_everything_it_wrote_with_paths_redacted(
    tmp_path: Path, coordinator: FakeCoordinator, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    data_dir = home / "sparegrid-worker"  # where a volunteer's data directory usually is
    blob = b"some input"
    digest = coordinator.put_blob(blob)
    async with running_worker(make_config(data_dir, coordinator.address)):
        session = await coordinator.session()
        session.assign(chatty("a1", digest, len(blob)))
        [failure] = await session.wait_failures(1)
    assert failure.code == "EXECUTOR_ERROR"
    log = verify_log(session.hello.public_key, failure.log)  # signed by the node
    assert (log.statement.attempt_id, log.statement.outcome) == ("a1", "EXECUTOR_ERROR")
    text = log.text.decode()
    assert f"reading <cache>/sha256/{digest[:2]}/{digest} into" in text  # the input's path
    assert "into <scratch>/" in text  # stderr
    assert "home is <home>" in text  # stdout
    assert "UserWarning: <scratch> is nearly full" in text  # a warning
    assert "from a program it started" in text  # a program's own stderr
    assert "Traceback" in text and "ValueError: could not parse <cache>/" in text
    assert str(tmp_path) not in text and str(home) not in text


async def test_a_results_log_comes_only_when_the_job_keeps_logs(
    tmp_path: Path, coordinator: FakeCoordinator
) -> None:
    blob = b"some input"
    digest = coordinator.put_blob(blob)
    async with running_worker(make_config(tmp_path, coordinator.address)):
        session = await coordinator.session()
        session.assign(chatty("plain", digest, len(blob), ok=True))
        await session.wait_statements(1)
        kept = chatty("kept", digest, len(blob), ok=True)
        kept.keep_logs = True
        session.assign(kept)
        await session.wait_statements(2)
    logs = [log for m in session.of_kind("results") for log in m.results.logs]
    assert len(logs) == 1
    checked = verify_log(session.hello.public_key, logs[0])
    assert (checked.statement.attempt_id, checked.statement.outcome) == ("kept", SUCCEEDED)
    assert b"from a program it started" in checked.text
    assert str(tmp_path).encode() not in checked.text


def test_the_redactor_keeps_the_tail_and_matches_only_whole_paths(tmp_path: Path) -> None:
    redact = Redactor({"<data>": tmp_path / "al"})
    other = str(tmp_path / "alice")
    text = f"{tmp_path}/al/x and {other} and '{tmp_path}/al'\n".encode()
    assert redact(text) == f"<data>/x and {other} and '<data>'\n".encode()
    long = b"".join(b"line %06d\n" % i for i in range(20_000))
    kept = redact(long)
    assert kept is not None and len(kept) <= MAX_LOG_BYTES
    assert kept.endswith(b"line 019999\n") and kept.startswith(b"line ")  # whole lines
    assert redact("not bytes") is None and redact(None) is None  # what a forged frame holds


def test_a_log_statement_binds_the_text() -> None:
    from sparegrid.wire import BadSignature, Signer
    from sparegrid.wire.tasklog import sign_log

    signer = Signer.generate()
    log = sign_log(signer, "j", "t", "a", "EXECUTOR_ERROR", b"boom")
    assert verify_log(signer.public_key, log).text == b"boom"
    tampered = common_pb2.TaskLog()
    tampered.CopyFrom(log)
    tampered.text = b"calm"
    with pytest.raises(BadSignature, match="not the text"):
        verify_log(signer.public_key, tampered)
    with pytest.raises(BadSignature):
        verify_log(Signer.generate().public_key, log)
    assert hashlib.sha256(b"boom").digest() in log.statement
