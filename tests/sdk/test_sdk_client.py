"""Client and AsyncClient against the fake coordinator on a real grpc.aio server."""

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sparegrid.sdk import (
    AdminClient,
    AlreadyExistsError,
    AsyncAdminClient,
    AsyncClient,
    AsyncJob,
    AuthenticationError,
    Client,
    DeadlineExceededError,
    FailedPreconditionError,
    InvalidArgumentError,
    JobState,
    NotFoundError,
    PermissionDeniedError,
    TaskState,
    UnavailableError,
    convert,
)
from sparegrid.sdk.retry import NO_RETRY, RetryPolicy
from sparegrid.sdk.testing import FakeCoordinator, serve_fake
from sparegrid.wire import sha256_hex

FAST = RetryPolicy(initial_backoff=0.01, max_backoff=0.02)


@pytest.fixture
async def fake() -> AsyncIterator[tuple[FakeCoordinator, str, str]]:
    coordinator = FakeCoordinator(tick=0.002)
    key = coordinator.add_account("alice", credit=1000)
    server, address = await serve_fake(coordinator)
    yield coordinator, address, key
    await coordinator.stop()
    await server.stop(None)


@pytest.fixture
async def client(fake: tuple[FakeCoordinator, str, str]) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(fake[1], fake[2], retry=FAST) as c:
        yield c


async def test_checksum_job_end_to_end(client: AsyncClient, tmp_path: Path) -> None:
    data = bytes(range(256)) * 100
    path = tmp_path / "in.bin"
    path.write_bytes(data)
    job = await client.checksum(path, tasks=5)
    assert job.kind == "checksum"
    seen: list[int] = []
    await job.wait(timeout=10, on_progress=lambda j: seen.append(j.counts.done))
    assert job.state is JobState.SUCCEEDED
    assert seen[-1] == 5
    assert (job.cost_held, job.cost_spent, job.cost_refunded) == (5, 5, 0)
    results = await job.results()  # the fake pages by 3: two pages
    assert [r.index for r in results] == [0, 1, 2, 3, 4]
    for i, result in enumerate(results):
        part = data[i * len(data) // 5 : (i + 1) * len(data) // 5]
        assert (await result.output_async("sha256")).decode() == sha256_hex(part)
    report = await job.verify()
    assert (report.ok, report.failures, report.passed) == (5, [], True)


async def test_watch_reconnects_after_unavailable(
    fake: tuple[FakeCoordinator, str, str], client: AsyncClient
) -> None:
    fake[0].cut_watch_after = 1
    job = await client.echo("hi", tasks=4)
    states = [update.state async for update in client.watch(job.id, timeout=10)]
    assert states[-1] is JobState.SUCCEEDED
    assert len(states) >= 2


async def test_wait_timeout(fake: tuple[FakeCoordinator, str, str], client: AsyncClient) -> None:
    fake[0].tick = 1.0
    job = await client.echo("slow", tasks=50)
    with pytest.raises(DeadlineExceededError) as info:
        await job.wait(timeout=0.2)
    assert info.value.code == "WAIT_TIMEOUT"
    await job.cancel()
    assert job.state is JobState.CANCELLED


@pytest.mark.parametrize("timeout", [-1.0, float("nan"), float("inf")])
async def test_a_wait_timeout_that_is_no_time_is_refused(
    fake: tuple[FakeCoordinator, str, str], client: AsyncClient, timeout: float
) -> None:
    """`job.wait(timeout=-1)` waited and said the job 'did not finish within -1s', as a
    real timeout does; nan never timed out at all."""
    fake[0].tick = 1.0
    job = await client.echo("slow", tasks=50)
    with pytest.raises(InvalidArgumentError) as info:
        await job.wait(timeout=timeout)
    assert info.value.code == "BAD_TIMEOUT"
    assert "timeout must be 0 or more seconds" in info.value.message
    await job.cancel()


async def test_failed_tasks_are_skipped_by_verify(
    fake: tuple[FakeCoordinator, str, str], client: AsyncClient
) -> None:
    fake[0].fail_indices = {1}
    job = await (await client.echo("x", tasks=3)).wait(timeout=10)
    assert job.state is JobState.FAILED
    assert job.cost_refunded == 1
    results = await job.results()
    assert results[1].state is TaskState.FAILED
    assert results[1].error == "boom"
    report = await job.verify()
    assert (report.ok, report.skipped) == (2, 1)


async def test_errors_are_typed(client: AsyncClient) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        await client.submit("render-everything")
    assert info.value.code == "UNKNOWN_KIND"
    assert "known kinds: checksum, echo" in info.value.message
    with pytest.raises(NotFoundError) as missing:
        await client.get_job("nope")
    assert missing.value.code == "JOB_NOT_FOUND"
    with pytest.raises(FailedPreconditionError) as poor:
        await client.echo("x", tasks=5000)
    assert poor.value.code == "INSUFFICIENT_CREDIT"


async def test_bad_api_key(fake: tuple[FakeCoordinator, str, str]) -> None:
    async with AsyncClient(fake[1], "wrong") as c:
        with pytest.raises(AuthenticationError) as info:
            await c.account()
    assert info.value.code == "BAD_API_KEY"


async def test_submit_is_idempotent(client: AsyncClient) -> None:
    first = await client.submit("echo", {"data": "a"}, idempotency_key="k-1")
    again = await client.submit("echo", {"data": "a"}, idempotency_key="k-1")
    other = await client.submit("echo", {"data": "a"})
    assert first.id == again.id != other.id
    with pytest.raises(AlreadyExistsError) as reused:
        await client.submit("echo", {"data": "b"}, idempotency_key="k-1")
    assert reused.value.code == "IDEMPOTENCY_KEY_REUSED"


async def test_account_info_and_list(client: AsyncClient) -> None:
    info = await client.info()
    assert [k.name for k in info.kinds] == ["echo", "checksum"]
    await client.echo("x")
    jobs = await client.list_jobs()
    assert len(jobs) == 1
    account = await client.account()
    assert account.name == "alice"
    assert account.balance <= 1000


async def test_async_admin(fake: tuple[FakeCoordinator, str, str]) -> None:
    async with AsyncAdminClient(fake[1], "admin-key") as admin:
        account, key = await admin.create_account("bob", credit=10)
        assert (account.name, account.balance, len(key) > 0) == ("bob", 10, True)
        with pytest.raises(AlreadyExistsError):
            await admin.create_account("bob")
        granted = await admin.grant("bob", 5, "thanks", idempotency_key="g1")
        assert granted.balance == 15
        assert (await admin.grant("bob", 5, "thanks", idempotency_key="g1")).balance == 15
        assert {a.name for a in await admin.list_accounts()} == {"admin", "alice", "bob"}
        assert (await admin.ledger_check()).balanced
        assert len(await admin.ledger_entries(account="bob")) == 2
        assert (await admin.nodes())[0].state == "online"
    async with AsyncAdminClient(fake[1], fake[2]) as not_admin:
        with pytest.raises(PermissionDeniedError):
            await not_admin.nodes()


async def test_sync_clients(fake: tuple[FakeCoordinator, str, str], tmp_path: Path) -> None:
    _, address, key = fake

    def work() -> None:
        with Client(address, key, retry=FAST) as client:
            path = tmp_path / "f.bin"
            path.write_bytes(b"x" * 1000)
            job = client.checksum(path, tasks=2).wait(timeout=10)
            assert job.state is JobState.SUCCEEDED
            assert job.verify().ok == 2
            assert job.refresh().finished
            assert job.results()[0].output("sha256") == sha256_hex(b"x" * 500).encode()
            assert [j.state for j in client.watch(job.id)] == [JobState.SUCCEEDED]
            slow = client.echo("x", tasks=3, sleep_ms=1)
            assert slow.cancel().state in (JobState.CANCELLED, JobState.SUCCEEDED)
        with AdminClient(address, "admin-key") as admin:
            assert admin.ledger_check().balanced
            assert admin.nodes()[0].name == "fake-node"
            assert admin.create_account("carol", 3)[0].balance == 3
            assert admin.grant("carol", 2).balance == 5
            assert len(admin.list_accounts()) == 3
            assert admin.ledger_entries(limit=1)[0].amount != 0

    await asyncio.to_thread(work)


def test_async_client_made_outside_a_loop() -> None:
    client = AsyncClient("127.0.0.1:1", "k", retry=NO_RETRY)

    async def use() -> str:
        async with client:
            with pytest.raises(UnavailableError) as info:
                await client.info()
        return info.value.code

    assert asyncio.run(use()) == "UNAVAILABLE"


def test_a_coordinator_that_is_not_there_is_said_so() -> None:
    """The SDK's error was gRPC's alone: "failed to connect to all addresses; last error:
    UNAVAILABLE: ipv4:127.0.0.1:1: Failed to connect to remote host: Connection refused"."""
    with (
        Client("127.0.0.1:1", "k", retry=NO_RETRY) as client,
        pytest.raises(UnavailableError) as info,
    ):
        client.info()
    message = info.value.message
    assert message.startswith("cannot reach the coordinator (is it running, and is its address")
    assert "127.0.0.1:1" in message and message.endswith("Connection refused")


async def test_async_results_from_reads_one_page_from_a_task_on(client: AsyncClient) -> None:
    job = await (await client.echo("hi", tasks=5)).wait(timeout=10)
    page = await client.results_from(job.id, 3)
    assert [r.index for r in page] == [3, 4]
    assert [await r.output_async("data") for r in page] == [b"hi", b"hi"]
    assert [r.index for r in await client.results_from(job.id, 0, limit=2)] == [0, 1]


async def test_async_wait_awaits_a_coroutine_callback(client: AsyncClient) -> None:
    seen: list[int] = []

    async def on_progress(job: AsyncJob) -> None:
        await asyncio.sleep(0)
        seen.append(job.counts.done)

    job = await (await client.echo("x", tasks=2)).wait(timeout=10, on_progress=on_progress)
    assert job.finished and seen[-1] == 2


def test_an_invitation_expiry_past_a_request_is_refused_before_sending() -> None:
    """Past a timedelta it was an OverflowError (`admin invite create --expires
    9999999999999999999999s` showed a traceback); within, a Duration of whole seconds and
    nanoseconds that the coordinator bounds (ten years, BAD_EXPIRY)."""
    for seconds in (1e22, float("inf"), float(2**63)):
        with pytest.raises(InvalidArgumentError) as info:
            convert.invite_request(1, seconds, 0, "")
        assert info.value.code == "BAD_EXPIRY"
    request = convert.invite_request(2, 90.5, 3, "n")
    assert (request.expires_in.seconds, request.expires_in.nanos) == (90, 500_000_000)
    assert (request.uses, request.credit, request.note) == (2, 3, "n")
    assert not convert.invite_request(1, 0, 0, "").HasField("expires_in")
    far = convert.invite_request(1, 8.6e9, 0, "")  # past ten years: the coordinator refuses
    assert far.expires_in.seconds == 8_600_000_000
