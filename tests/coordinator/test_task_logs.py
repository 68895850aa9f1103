"""Task logs over real gRPC: a worker's signed log is kept per attempt and read by the
job's owner alone; a rogue worker's oversize, unsigned, tampered or misdirected log is
refused and changes nothing; hostile text cannot drive the terminal of `job logs`."""

import asyncio

import grpc
import pytest
from grpc import aio

from sparegrid.cli.logs import printable
from sparegrid.cli.main import main
from sparegrid.coordinator.domain import AttemptState, TaskState
from sparegrid.coordinator.rpc import client as rpc_client
from sparegrid.coordinator.services import results
from sparegrid.sdk import Client, NotFoundError
from sparegrid.v1 import client_pb2, client_pb2_grpc, common_pb2, worker_pb2
from sparegrid.wire import Signer, sha256_hex
from sparegrid.wire.receipt import sign_batch
from sparegrid.wire.tasklog import MAX_LOG_BYTES, SUCCEEDED, sign_log
from tests.coordinator.conftest import Served, code_of
from tests.coordinator.sessions import Call, session

TRACE = b"Traceback (most recent call last):\n  ...\nRuntimeError: shape mismatch\n"


async def submit(
    served: Served, tasks: int = 1, keep_logs: bool = False, max_attempts: int = 1
) -> str:
    client = client_pb2_grpc.ClientServiceStub(served.channel)
    spec = client_pb2.JobSpec(
        kind="echo", params=b'{"tasks": %d}' % tasks, max_attempts=max_attempts, keep_logs=keep_logs
    )
    response = await client.SubmitJob(
        client_pb2.SubmitJobRequest(spec=spec), metadata=served.auth(served.bob_key)
    )
    return response.job.job_id


async def assigned(served: Served, signer: Signer, count: int = 1) -> tuple[Call, str, list]:  # type: ignore[type-arg]
    call, node_id = await session(served, signer, served.alice_key)
    await call.write(
        worker_pb2.WorkerMessage(credit=worker_pb2.Credit(device_index=0, count=count))
    )
    assignments = list((await call.read()).assign.assignments)
    while len(assignments) < count:
        assignments += (await call.read()).assign.assignments
    return call, node_id, assignments


def log_for(
    signer: Signer, a: worker_pb2.Assignment, outcome: str, text: bytes
) -> common_pb2.TaskLog:
    return sign_log(signer, a.job_id, a.task_id, a.attempt_id, outcome, text)


async def fail(
    call: Call, a: worker_pb2.Assignment, log: common_pb2.TaskLog
) -> worker_pb2.AttemptVerdict:
    failure = worker_pb2.TaskFailure(
        attempt_id=a.attempt_id, code="EXECUTOR_ERROR", message="boom", retryable=True, log=log
    )
    await call.write(
        worker_pb2.WorkerMessage(failures=worker_pb2.Failures(batch_id=1, failures=[failure]))
    )
    return await verdict_of(call)


async def verdict_of(call: Call) -> worker_pb2.AttemptVerdict:
    """The next acknowledgement's one verdict (a cancel of the job's other tasks, or the
    node's new credit total, may come first)."""
    while not (message := await call.read()).HasField("result_ack"):
        assert message.WhichOneof("body") in ("cancel", "assign", "credited"), message
    [verdict] = message.result_ack.verdicts
    return verdict


async def succeed(
    call: Call, signer: Signer, node_id: str, a: worker_pb2.Assignment, log: common_pb2.TaskLog
) -> worker_pb2.AttemptVerdict:
    statement = common_pb2.ResultStatement(
        job_id=a.job_id,
        task_id=a.task_id,
        attempt_id=a.attempt_id,
        node_id=node_id,
        outputs=[common_pb2.OutputRef(name="out", digest=sha256_hex(b"ok"), size=2)],
    ).SerializeToString()
    results = worker_pb2.Results(
        batch_id=2,
        statements=[statement],
        signature=sign_batch(signer, [statement]),
        inline_outputs={sha256_hex(b"ok"): b"ok"},
        logs=[log],
    )
    await call.write(worker_pb2.WorkerMessage(results=results))
    return await verdict_of(call)


def logs_of(served: Served, key: str, job_id: str, task: int | None = None) -> list:  # type: ignore[type-arg]
    with Client(served.address, api_key=key) as client:
        return client.task_logs(job_id, task=task)


async def test_a_failed_tasks_log_is_kept_and_read_by_the_jobs_owner_alone(
    served: Served,
) -> None:
    job_id = await submit(served, tasks=2)
    signer = Signer.generate()
    call, node_id, [first, _] = await assigned(served, signer, count=2)
    verdict = await fail(call, first, log_for(signer, first, "EXECUTOR_ERROR", TRACE))
    assert verdict.accepted
    call.cancel()
    [log] = await asyncio.to_thread(logs_of, served, served.bob_key, job_id)
    assert (log.task_id, log.attempt_id, log.node_id) == (first.task_id, first.attempt_id, node_id)
    assert (log.outcome, log.text, log.verified) == ("EXECUTOR_ERROR", TRACE.decode(), True)
    index = log.task_index
    assert await asyncio.to_thread(logs_of, served, served.bob_key, job_id, 1 - index) == []
    assert len(await asyncio.to_thread(logs_of, served, served.bob_key, job_id, index)) == 1
    # another account gets what it gets for a job that does not exist
    for asked in (job_id, "no-such-job"):
        with pytest.raises(NotFoundError) as caught:
            await asyncio.to_thread(logs_of, served, served.alice_key, asked)
        assert caught.value.code == "JOB_NOT_FOUND"
        assert str(caught.value).startswith(f"no job '{asked}' in account 'alice'")
    stub = client_pb2_grpc.ClientServiceStub(served.channel)
    with pytest.raises(aio.AioRpcError) as err:
        request = client_pb2.GetTaskLogsRequest(job_id=job_id, task_index=7)
        await stub.GetTaskLogs(request, metadata=served.auth(served.bob_key))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(err.value) == "BAD_TASK" and "tasks 0 to 1, not 7" in str(err.value.details())


async def test_a_rogue_workers_bad_logs_are_refused_and_kept_nowhere(served: Served) -> None:
    job_id = await submit(served, tasks=2, max_attempts=2)
    signer = Signer.generate()
    call, node_id, [a, b] = await assigned(served, signer, count=2)
    store = served.app.store
    balances = store.balances()
    stranger = Signer.generate()
    tampered = log_for(signer, a, "EXECUTOR_ERROR", TRACE)
    tampered.text = b"all is well"
    unsigned = log_for(signer, a, "EXECUTOR_ERROR", TRACE)
    unsigned.signature = b""
    other_attempt = sign_log(signer, a.job_id, a.task_id, "attempt-x", "EXECUTOR_ERROR", TRACE)
    bad = {
        "LOG_TOO_LARGE": log_for(signer, a, "EXECUTOR_ERROR", b"x" * (MAX_LOG_BYTES + 1)),
        "BAD_LOG": [
            tampered,
            unsigned,
            log_for(stranger, a, "EXECUTOR_ERROR", TRACE),  # another node's key
            other_attempt,
            log_for(signer, a, "TIMEOUT", TRACE),  # another outcome than the failure's
        ],
    }
    for code, logs in bad.items():
        for log in logs if isinstance(logs, list) else [logs]:
            verdict = await fail(call, a, log)
            assert (verdict.accepted, verdict.code) == (False, code)
            assert "log" in verdict.message
    # the failure itself is the node's to report (a worker sends no other): recorded
    # without its log, its task queued again at once rather than at the lease's maximum age
    [attempt] = store.get_attempts([a.attempt_id])
    [task] = store.get_tasks([a.task_id])
    assert (attempt.state, attempt.error_code) == (AttemptState.FAILED, "EXECUTOR_ERROR")
    assert task.state == TaskState.QUEUED
    # nor does a result with a bad log succeed, for a job that keeps logs or not: it is
    # paid nothing, and ends its attempt (a worker sends no other result for it), its
    # task queued again
    forged = log_for(signer, b, SUCCEEDED, b"fine\n")
    forged.text = b"all is well"
    verdict = await succeed(call, signer, node_id, b, forged)
    assert (verdict.accepted, verdict.code) == (False, "BAD_LOG")
    [attempt] = store.get_attempts([b.attempt_id])
    [task] = store.get_tasks([b.task_id])
    assert (attempt.state, attempt.error_code) == (AttemptState.FAILED, "BAD_LOG")
    assert task.state == TaskState.QUEUED
    assert store.balances() == balances and store.task_logs(job_id) == []
    call.cancel()


async def test_a_successful_tasks_log_is_kept_only_when_the_job_asks(served: Served) -> None:
    signer = Signer.generate()
    kept: dict[bool, list] = {}  # type: ignore[type-arg]
    for keep in (False, True):
        job_id = await submit(served, keep_logs=keep)
        call, node_id, [a] = await assigned(served, signer)
        assert a.keep_logs is keep  # the worker is told
        verdict = await succeed(call, signer, node_id, a, log_for(signer, a, SUCCEEDED, b"fine\n"))
        assert verdict.accepted
        call.cancel()
        kept[keep] = await asyncio.to_thread(logs_of, served, served.bob_key, job_id)
    assert kept[False] == []
    [log] = kept[True]
    assert (log.outcome, log.text, log.verified) == (SUCCEEDED, "fine\n", True)


HOSTILE = (
    "\x1b]0;owned\x07"  # retitle the window
    "\x1b[2J\x1b[H"  # clear the screen
    "fake prompt$ \r"  # rewrite the line
    "\u202egnp.exe\n"  # reverse what follows
    "\x9b31m"  # a C1 control sequence introducer
)


async def test_job_logs_shows_a_hostile_log_without_letting_it_drive_the_terminal(
    served: Served, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    job_id = await submit(served)
    signer = Signer.generate()
    call, _, [a] = await assigned(served, signer)
    text = ("line one\n\ttabbed\n" + HOSTILE).encode()
    assert (await fail(call, a, log_for(signer, a, "EXECUTOR_ERROR", text))).accepted
    call.cancel()
    monkeypatch.setenv("SPAREGRID_COORDINATOR", served.address)
    monkeypatch.setenv("SPAREGRID_API_KEY", served.bob_key)
    capsys.readouterr()
    assert await asyncio.to_thread(main, ["job", "logs", job_id]) == 0
    out = capsys.readouterr().out
    for control in ("\x1b", "\x07", "\r", "\u202e", "\x9b"):
        assert control not in out
    assert "line one\n\ttabbed\n" in out and "\\x1b]0;owned\\x07" in out
    assert "\\u202egnp.exe" in out and "fake prompt$ \\x0d" in out
    assert f"attempt {a.attempt_id}" in out and "EXECUTOR_ERROR (signed)" in out
    assert await asyncio.to_thread(main, ["job", "logs", job_id, "--json"]) == 0
    assert "\x1b" not in capsys.readouterr().out
    assert await asyncio.to_thread(main, ["job", "logs", job_id, "--task", "-1"]) != 0
    refused = capsys.readouterr()
    assert "--task is a task index (0 or more), got -1" in refused.err and not refused.out
    assert printable("a\x00b\u2028c") == "a\\x00b\\u2028c"


async def test_a_job_keeps_a_bounded_number_of_logs(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(results, "MAX_LOGS_PER_JOB", 2)
    job_id = await submit(served, tasks=3, max_attempts=3)  # the job goes on after a failure
    signer = Signer.generate()
    call, _, assignments = await assigned(served, signer, count=3)
    for a in assignments:  # each failure is taken; only the first two logs are kept
        assert (await fail(call, a, log_for(signer, a, "EXECUTOR_ERROR", TRACE))).accepted
    call.cancel()
    kept = served.app.store.task_logs(job_id)
    assert sorted(x.attempt_id for x in kept) == sorted(a.attempt_id for a in assignments[:2])


async def test_logs_come_in_pages_so_no_reply_holds_them_all(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rpc_client, "LOGS_PAGE", 2)  # a page holds 32 logs of 64 KiB
    job_id = await submit(served, tasks=3, max_attempts=3)
    signer = Signer.generate()
    call, _, assignments = await assigned(served, signer, count=3)
    for a in assignments:
        assert (await fail(call, a, log_for(signer, a, "EXECUTOR_ERROR", TRACE))).accepted
    call.cancel()
    stub = client_pb2_grpc.ClientServiceStub(served.channel)
    sizes, token = [], ""
    while True:
        request = client_pb2.GetTaskLogsRequest(job_id=job_id, all_tasks=True, page_token=token)
        page = await stub.GetTaskLogs(request, metadata=served.auth(served.bob_key))
        sizes.append(len(page.logs))
        token = page.next_page_token
        if not token:
            break
    assert sizes == [2, 1]
    every = await asyncio.to_thread(logs_of, served, served.bob_key, job_id)
    assert sorted(x.attempt_id for x in every) == sorted(a.attempt_id for a in assignments)
    bad = client_pb2.GetTaskLogsRequest(job_id=job_id, all_tasks=True, page_token="x" * 30)
    with pytest.raises(aio.AioRpcError) as err:
        await stub.GetTaskLogs(bad, metadata=served.auth(served.bob_key))
    assert code_of(err.value) == "BAD_PAGE_TOKEN"
