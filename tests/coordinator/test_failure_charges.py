"""A task that fails for good for its own fault (it ran past the nodes' time limit, its
executor raised on it, its input is bad), as nodes of two owners agree, costs its client
the task's price per agreeing node, and pays each of those nodes once, as agreeing results
are paid: a client whose every task times out no longer burns volunteers' GPUs for free.
One node's failure that a node of another owner does not confirm pays nothing (a node
failing everything would be paid for nothing), nor does a failure that is the node's own
(out of memory, preempted). Over real gRPC on SQLite and PostgreSQL, and on the memory
store."""

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sparegrid.coordinator.clock import FakeClock
from sparegrid.coordinator.domain import client_account, escrow_account
from sparegrid.coordinator.services.jobspec import JobSpec
from sparegrid.coordinator.services.prices import Price
from sparegrid.coordinator.services.results import Failure
from sparegrid.coordinator.settings import Settings
from sparegrid.v1 import client_pb2, client_pb2_grpc, worker_pb2
from sparegrid.wire import Signer
from tests.coordinator.conftest import Served, served_with, store_kinds
from tests.coordinator.helpers import FakeNode, make_app, make_client
from tests.coordinator.sessions import Call, next_ack, session, signed_results

PRICE = 1  # an echo task's
HOUR = 3600.0  # the coordinator's default --max-attempt-seconds
LIMIT = 0.5  # the coordinator's --max-attempt-seconds here: a failure after it is paid whole


@pytest.fixture(params=store_kinds())
async def served(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Served]:
    """As conftest's, with a time limit short enough to run out in a test."""
    settings = Settings(
        data_dir=tmp_path, max_blob_size=10 << 20, lease_seconds=5.0, max_attempt_seconds=LIMIT
    )
    async with served_with(request.param, tmp_path, settings) as served:
        yield served


def credit() -> worker_pb2.WorkerMessage:
    return worker_pb2.WorkerMessage(credit=worker_pb2.Credit(device_index=0, count=1))


def failure(attempt_id: str, code: str, batch: int) -> worker_pb2.WorkerMessage:
    retryable = code not in ("BAD_INPUT", "BAD_PARAMS")
    sent = worker_pb2.TaskFailure(
        attempt_id=attempt_id, code=code, message=f"{code} here", retryable=retryable
    )
    return worker_pb2.WorkerMessage(failures=worker_pb2.Failures(batch_id=batch, failures=[sent]))


async def take(call: Call) -> worker_pb2.Assignment:
    await call.write(credit())
    [assignment] = (await asyncio.wait_for(call.read(), 10)).assign.assignments
    return assignment


async def fail(
    call: Call, assignment: worker_pb2.Assignment, code: str, batch: int, ran: float = 0.0
) -> None:
    """Fails an attempt `ran` seconds after now (a failure at once is paid nothing)."""
    await asyncio.sleep(ran)
    await call.write(failure(assignment.attempt_id, code, batch))
    await next_ack(call)


async def ended(served: Served, job_id: str) -> str:
    deadline = asyncio.get_running_loop().time() + 10
    while (state := served.app.store.get_job(job_id).state.value) in ("queued", "running"):
        assert asyncio.get_running_loop().time() < deadline, state
        await asyncio.sleep(0.05)
    return state


class Pair:
    """A 1-task job of alice's (at most 2 attempts), and a node of bob's and of carol's."""

    def __init__(self, served: Served) -> None:
        self.served = served
        self.bob_signer, self.carol_signer = Signer.generate(), Signer.generate()

    async def start(self) -> "Pair":
        served = self.served
        carol_key = served.app.accounts.create("carol", 0)[1]
        self.bob, _ = await session(served, self.bob_signer, served.bob_key, "bob's")
        self.carol, _ = await session(served, self.carol_signer, carol_key, "carol's")
        client = client_pb2_grpc.ClientServiceStub(served.channel)
        spec = client_pb2.JobSpec(kind="echo", params=b'{"tasks": 1}', max_attempts=2)
        request = client_pb2.SubmitJobRequest(spec=spec)
        self.job_id = (
            await client.SubmitJob(request, metadata=served.auth(served.alice_key))
        ).job.job_id
        self.before = served.app.store.balance(client_account("alice")) + self.held()
        return self

    def held(self) -> int:
        return self.served.app.store.balance(escrow_account(self.job_id))

    def paid(self) -> dict[str, int]:
        """Credit paid to nodes, by owner."""
        names = {self.bob_signer.node_id: "bob", self.carol_signer.node_id: "carol"}
        paid = self.served.app.store.balances("node:")
        return {names[account.removeprefix("node:")]: amount for account, amount in paid.items()}

    def spent(self) -> int:
        """What the job cost alice, by her balance; checked against its cost field."""
        served = self.served
        spent = self.before - served.app.store.balance(client_account("alice")) - self.held()
        assert served.app.store.get_job(self.job_id).cost_spent == spent
        assert served.app.ledger.check().balanced, served.app.ledger.check().problems
        return spent


@pytest.mark.parametrize("code", ["TIMEOUT", "EXECUTOR_ERROR", "BAD_INPUT"])
async def test_a_task_two_owners_fail_for_its_own_fault_is_charged_and_paid_once(
    served: Served, code: str
) -> None:
    pair = await Pair(served).start()
    first = await take(pair.bob)
    await pair.carol.write(credit())  # carol's node waits for work: it could run the task
    await fail(pair.bob, first, code, 1, ran=LIMIT)
    assert served.app.store.get_job(pair.job_id).state.value == "running"
    [again] = (await asyncio.wait_for(pair.carol.read(), 10)).assign.assignments
    await fail(pair.carol, again, code, 1, ran=LIMIT)
    assert await ended(served, pair.job_id) == "failed"
    assert pair.paid() == {"bob": PRICE, "carol": PRICE}
    assert pair.spent() == 2 * PRICE
    # the same failure statements sent again (an ack lost) pay nothing more
    await fail(pair.bob, first, code, 2)
    await fail(pair.carol, again, code, 2)
    assert pair.paid() == {"bob": PRICE, "carol": PRICE}
    assert pair.spent() == 2 * PRICE


async def test_a_failure_another_owner_does_not_confirm_is_not_paid(served: Served) -> None:
    """bob's node says the task timed out; carol's runs it: only carol's result is paid."""
    pair = await Pair(served).start()
    first = await take(pair.bob)
    await fail(pair.bob, first, "TIMEOUT", 1)
    pair.bob.cancel()  # gone: carol's result is not held for a check by bob's node
    deadline = asyncio.get_running_loop().time() + 10
    while len(served.app.scheduler.sessions) > 1:
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.05)
    again = await take(pair.carol)
    await pair.carol.write(signed_results(pair.carol_signer, [again], b"ok", batch_id=1))
    assert (await next_ack(pair.carol)).verdicts[0].accepted
    assert await ended(served, pair.job_id) == "succeeded"
    assert pair.paid() == {"carol": PRICE}
    assert pair.spent() == PRICE


@pytest.mark.parametrize("codes", [("CUDA_OOM", "CUDA_OOM"), ("TIMEOUT", "CUDA_OOM")])
async def test_a_failure_that_is_the_nodes_own_charges_nothing(
    served: Served, codes: tuple[str, str]
) -> None:
    """Out of memory is the node's device, not the task: a task failed for good that way,
    or with only one owner's failure the task's fault, costs its client nothing."""
    pair = await Pair(served).start()
    await fail(pair.bob, await take(pair.bob), codes[0], 1)
    await fail(pair.carol, await take(pair.carol), codes[1], 1)
    assert await ended(served, pair.job_id) == "failed"
    assert pair.paid() == {}
    assert pair.spent() == 0


# --- the memory store ----------------------------------------------------------------


def test_on_the_memory_store_agreeing_timeouts_are_paid_once_and_preempting_never(
    tmp_path: Path,
) -> None:
    app = make_app(tmp_path)
    clock = app.clock
    assert isinstance(clock, FakeClock)
    alice = make_client(app, credit=100)
    spec = JobSpec(kind="echo", params=b'{"tasks": 1}', max_attempts=2)
    job_id = app.jobs.submit(alice, spec).id
    nodes = [FakeNode(app, f"n{i}") for i in range(3)]
    preempting, bob, carol = nodes
    preempting.connect(credit=1)
    [(attempt, _, _)] = preempting.sink.take()
    app.intake.failures(preempting.id, [Failure(attempt.id, "PREEMPTED", "owner back", True)])
    bob.connect(credit=1)
    [(first, _, _)] = bob.sink.take()
    clock.advance(HOUR)  # ran the coordinator's whole time limit
    timeout = Failure(first.id, "TIMEOUT", "ran past 3600s", True)
    app.intake.failures(bob.id, [timeout])
    carol.connect(credit=1)
    [(second, _, _)] = carol.sink.take()
    clock.advance(HOUR)
    app.intake.failures(carol.id, [Failure(second.id, "TIMEOUT", "ran past 3600s", True)])
    app.intake.failures(bob.id, [timeout])  # sent again
    job = app.store.get_job(job_id)
    assert job.state.value == "failed" and job.cost_spent == 2 * PRICE
    assert app.store.balances("node:") == {f"node:{bob.id}": PRICE, f"node:{carol.id}": PRICE}
    assert app.store.balance(client_account("alice")) == 100 - 2 * PRICE
    assert app.ledger.check().balanced
    assert bob.sink.totals == [PRICE] and carol.sink.totals == [PRICE]  # each told once
    # the client runs it again (job retry --failed): new attempts fail, and are paid; the
    # first run's are not paid again
    app.retries.retry(alice, job_id)
    for node in (bob, carol):
        node.connect(credit=1)
        [(attempt, _, _)] = node.sink.take()
        clock.advance(HOUR)  # it raised at the end of an hour's work
        app.intake.failures(node.id, [Failure(attempt.id, "EXECUTOR_ERROR", "raised", True)])
    job = app.store.get_job(job_id)
    assert job.state.value == "failed" and job.cost_spent == 4 * PRICE
    assert app.store.balances("node:") == {
        f"node:{bob.id}": 2 * PRICE,
        f"node:{carol.id}": 2 * PRICE,
    }
    assert app.store.balance(client_account("alice")) == 100 - 4 * PRICE
    assert app.ledger.check().balanced


def test_a_timeout_on_a_node_that_stops_tasks_sooner_than_allowed_is_not_charged(
    tmp_path: Path,
) -> None:
    """A node that lets a task run 60 s where the coordinator allows an hour chose to stop
    it: its TIMEOUT is no sign of the task, and with only one owner's that is, the task
    that fails for good costs nothing."""
    app = make_app(tmp_path)
    alice = make_client(app, credit=100)
    spec = JobSpec(kind="echo", params=b'{"tasks": 1}', max_attempts=2)
    job_id = app.jobs.submit(alice, spec).id
    hasty, patient = FakeNode(app, "hasty"), FakeNode(app, "patient")
    for node, budget in ((hasty, 60.0), (patient, 0.0)):
        node.connect(credit=1, budget=budget)
        [(attempt, _, _)] = node.sink.take()
        app.intake.failures(node.id, [Failure(attempt.id, "TIMEOUT", "ran past", True)])
    job = app.store.get_job(job_id)
    assert job.state.value == "failed" and job.cost_spent == 0
    assert app.store.balances("node:") == {}
    assert app.ledger.check().balanced


def test_failures_reported_at_once_or_halfway_are_paid_for_the_time_they_ran(
    tmp_path: Path,
) -> None:
    """Two owners' nodes that fail a task at once (made-up failures, or a task that raises
    at its start) cost its client nothing: failing tasks must not pay better than running
    them. A failure after half the time limit is paid half the price."""
    app = make_app(tmp_path, prices={"echo": Price(credit=10, units=1)})
    clock = app.clock
    assert isinstance(clock, FakeClock)
    alice = make_client(app, credit=1000)
    spec = JobSpec(kind="echo", params=b'{"tasks": 1}', max_attempts=2)
    for ran in (0.0, HOUR / 2):
        job_id = app.jobs.submit(alice, spec).id
        for node in (FakeNode(app, f"b{ran}"), FakeNode(app, f"c{ran}")):
            node.connect(credit=1)
            [(attempt, _, _)] = node.sink.take()
            clock.advance(ran)
            app.intake.failures(node.id, [Failure(attempt.id, "EXECUTOR_ERROR", "raised", True)])
        job = app.store.get_job(job_id)
        assert job.state.value == "failed"
        assert job.cost_spent == (0 if ran == 0 else 2 * 5), ran
    assert app.ledger.check().balanced
