"""A failure is the node's claim, and a node key costs nothing: over real gRPC, on SQLite
and PostgreSQL, a node without an owner account cannot fail a client's job, by a failure
it calls final or by failing the task again and again under fresh keys, while a node of a
vetted owner could run it; the task runs there instead, and is paid once. A failure a
vetted owner's node calls final ends the task once a node of a second owner says so too,
or at once when no other owner's node could run it; so does one that ran out of the memory
of a device larger than any other (a claimed 1 TiB GPU); a task whose attempts one owner's
nodes spent alone goes on without that owner, and one a node hands back (PREEMPTED) goes
to none of its owner's nodes again. With no vetted node online an anonymous node's failure
counts as it always did."""

import asyncio

import pytest

from sparegrid.v1 import client_pb2, client_pb2_grpc, common_pb2, worker_pb2
from sparegrid.wire import Signer
from tests.coordinator.conftest import Served
from tests.coordinator.sessions import Call, next_ack, session, signed_results


def credit(count: int) -> worker_pb2.WorkerMessage:
    return worker_pb2.WorkerMessage(credit=worker_pb2.Credit(device_index=0, count=count))


async def submit(served: Served, tasks: int = 1, max_attempts: int = 3) -> str:
    client = client_pb2_grpc.ClientServiceStub(served.channel)
    spec = client_pb2.JobSpec(
        kind="echo", params=f'{{"tasks": {tasks}}}'.encode(), max_attempts=max_attempts
    )
    request = client_pb2.SubmitJobRequest(spec=spec)
    job = (await client.SubmitJob(request, metadata=served.auth(served.alice_key))).job
    return job.job_id


async def fail(
    call: Call,
    attempt_id: str,
    batch: int,
    retryable: bool,
    code: str = "BAD_INPUT",
    message: str = "the input is bad",
) -> None:
    failure = worker_pb2.TaskFailure(
        attempt_id=attempt_id, code=code, message=message, retryable=retryable
    )
    failures = worker_pb2.Failures(batch_id=batch, failures=[failure])
    await call.write(worker_pb2.WorkerMessage(failures=failures))
    await next_ack(call)


async def succeed(
    call: Call, signer: Signer, assignment: worker_pb2.Assignment, batch: int
) -> None:
    await call.write(signed_results(signer, [assignment], b"ok", batch_id=batch))
    assert (await next_ack(call)).verdicts[0].accepted


async def heartbeats(call: Call) -> None:
    while True:  # the lease of a busy node is renewed
        await call.write(worker_pb2.WorkerMessage(heartbeat=worker_pb2.Heartbeat()))
        await asyncio.sleep(1.0)


async def leave(served: Served, calls: list[Call]) -> None:
    """Ends the sessions, and waits until the coordinator has let them go."""
    for call in calls:
        call.cancel()
    deadline = asyncio.get_running_loop().time() + 10
    while len(served.app.scheduler.sessions) > 1:  # the other node's stays
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.05)


async def state(served: Served, job_id: str) -> str:
    await asyncio.sleep(0.2)
    return served.app.store.get_job(job_id).state.value


class Alice:
    """alice's node, holding the first of a 2-task job's tasks and heartbeating, while
    bob's nodes try the other; `finish` runs both on alice's node once bob's are gone."""

    def __init__(self, served: Served) -> None:
        self.served, self.signer = served, Signer.generate()

    async def start(self) -> "Alice":
        served = self.served
        self.call, _ = await session(
            served, self.signer, owner_key=served.alice_key, node_name="alice's"
        )
        self.job_id = await submit(served, tasks=2)
        await self.call.write(credit(1))  # alice's node takes a task, and is busy with it
        [self.first] = (await self.call.read()).assign.assignments
        self.beating = asyncio.create_task(heartbeats(self.call))
        return self

    async def finish(self, bobs: list[Call], task_id: str) -> None:
        """bob's nodes leave (alice's results are not held for them to check), and alice's
        node runs its task and then the one bob's held: the job succeeds, balanced."""
        served = self.served
        await leave(served, bobs)
        self.beating.cancel()
        await succeed(self.call, self.signer, self.first, 1)
        await self.call.write(credit(1))
        [second] = (await asyncio.wait_for(self.call.read(), 10)).assign.assignments
        assert second.task_id == task_id
        await succeed(self.call, self.signer, second, 2)
        assert await state(served, self.job_id) == "succeeded"
        assert served.app.ledger.check().balanced


async def test_fresh_keys_cannot_fail_a_job_while_a_vetted_node_could_run_it(
    served: Served,
) -> None:
    vetted = Signer.generate()
    honest, _ = await session(served, vetted, owner_key=served.bob_key, node_name="bob's")
    job_id = await submit(served, tasks=2)
    await honest.write(credit(1))  # bob's node takes one task, and is busy with it
    [first] = (await honest.read()).assign.assignments
    beating = asyncio.create_task(heartbeats(honest))
    sybil, _ = await session(served, Signer.generate(), node_name="sybil")
    await sybil.write(credit(1))
    [assignment] = (await sybil.read()).assign.assignments
    assert assignment.task_id != first.task_id
    await fail(sybil, assignment.attempt_id, 1, retryable=False)  # "the input is bad"
    assert await state(served, job_id) == "running"
    for n in range(3):  # fresh keys, as many as the job's attempts: none is given the task
        call, _ = await session(served, Signer.generate(), node_name=f"sybil{n}")
        await call.write(credit(1))
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(call.read(), 0.5)
        call.cancel()
    beating.cancel()
    await succeed(honest, vetted, first, 1)
    await honest.write(credit(1))
    [second] = (await asyncio.wait_for(honest.read(), 10)).assign.assignments
    assert second.task_id == assignment.task_id
    await succeed(honest, vetted, second, 2)
    assert await state(served, job_id) == "succeeded"
    assert served.app.ledger.check().balanced
    paid = served.app.store.balances("node:")
    assert paid == {f"node:{vetted.node_id}": 2}  # the vetted node, once a task; no sybil
    events = [e for e in served.app.store.list_events(job_id=job_id) if e.kind == "task.failed"]
    assert len(events) == 1 and not events[0].data["final"]


async def test_a_final_failure_needs_a_second_owner_while_one_could_run_the_task(
    served: Served,
) -> None:
    """One owner account's word does not end a job: its node's final failure counts as a
    failure (the task runs again), and only another owner's word too ends it."""
    bobs, alices = Signer.generate(), Signer.generate()
    bob, _ = await session(served, bobs, owner_key=served.bob_key, node_name="bob's")
    alice, _ = await session(served, alices, owner_key=served.alice_key, node_name="alice's")
    job_id = await submit(served, tasks=2)
    await alice.write(credit(1))  # alice's node takes a task: it is taking work
    [held] = (await alice.read()).assign.assignments
    beating = asyncio.create_task(heartbeats(alice))
    await bob.write(credit(1))
    [claimed] = (await bob.read()).assign.assignments
    await fail(bob, claimed.attempt_id, 1, retryable=False)
    assert await state(served, job_id) == "running"  # bob's word alone
    beating.cancel()
    await succeed(alice, alices, held, 1)
    await alice.write(credit(1))
    [again] = (await asyncio.wait_for(alice.read(), 10)).assign.assignments
    assert again.task_id == claimed.task_id
    await fail(alice, again.attempt_id, 2, retryable=False)  # a second owner says so too
    assert await state(served, job_id) == "failed"
    assert "BAD_INPUT: the input is bad" in served.app.store.get_job(job_id).error
    assert served.app.ledger.check().balanced


async def test_with_no_other_owner_taking_work_a_vetted_final_failure_ends_the_task(
    served: Served,
) -> None:
    signer = Signer.generate()
    call, _ = await session(served, signer, owner_key=served.bob_key)
    await session(served, Signer.generate(), owner_key=served.alice_key)  # takes no work
    job_id = await submit(served)
    await call.write(credit(1))
    [assignment] = (await call.read()).assign.assignments
    await fail(call, assignment.attempt_id, 1, retryable=False)
    assert await state(served, job_id) == "failed"
    assert "BAD_INPUT: the input is bad" in served.app.store.get_job(job_id).error


async def test_with_no_vetted_node_online_an_anonymous_failure_counts(served: Served) -> None:
    call, _ = await session(served, Signer.generate())
    job_id = await submit(served)
    await call.write(credit(1))
    [assignment] = (await call.read()).assign.assignments
    await fail(call, assignment.attempt_id, 1, retryable=False)
    assert await state(served, job_id) == "failed"


async def test_a_fresh_key_sitting_on_a_lease_cannot_fail_the_job(served: Served) -> None:
    vetted = Signer.generate()
    honest, _ = await session(served, vetted, owner_key=served.bob_key, node_name="bob's")
    job_id = await submit(served, tasks=2, max_attempts=1)  # one attempt per task
    await honest.write(credit(1))
    [first] = (await honest.read()).assign.assignments
    beating = asyncio.create_task(heartbeats(honest))
    sybil, _ = await session(served, Signer.generate(), node_name="silent")
    await sybil.write(credit(1))
    [held] = (await sybil.read()).assign.assignments  # taken, and never heartbeated
    deadline = asyncio.get_running_loop().time() + 20
    while served.app.store.get_attempts([held.attempt_id])[0].state.value == "running":
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.2)
    assert await state(served, job_id) == "running"  # the lease ran out: not counted
    beating.cancel()
    await succeed(honest, vetted, first, 1)
    await honest.write(credit(1))
    [second] = (await asyncio.wait_for(honest.read(), 10)).assign.assignments
    assert second.task_id == held.task_id
    await succeed(honest, vetted, second, 2)
    assert await state(served, job_id) == "succeeded"
    assert served.app.ledger.check().balanced


async def test_one_owners_nodes_cannot_use_up_a_tasks_attempts(served: Served) -> None:
    """Failures an owner's nodes call retryable (a network error, a crash) run the task
    again; once its attempts are spent by one owner alone, that owner is kept off the task
    and a node of another owner runs it: only a second owner's failure too ends it."""
    alice = await Alice(served).start()
    job_id = alice.job_id
    claimed, bobs = "", []
    for n in range(3):  # as many of bob's nodes as the job's attempts
        bob, _ = await session(served, Signer.generate(), served.bob_key, f"bob{n}")
        bobs.append(bob)
        await bob.write(credit(1))
        [assignment] = (await bob.read()).assign.assignments
        assert claimed in ("", assignment.task_id)
        claimed = assignment.task_id
        await fail(bob, assignment.attempt_id, 1, True, "EXECUTOR_CRASHED", "the network broke")
        assert await state(served, job_id) == "running"
    bob, _ = await session(served, Signer.generate(), served.bob_key, "bob3")
    await bob.write(credit(1))
    with pytest.raises(TimeoutError):  # bob is off the task now
        await asyncio.wait_for(bob.read(), 0.5)
    await alice.finish([*bobs, bob], claimed)


async def test_out_of_memory_on_a_claimed_huge_device_does_not_end_the_task(
    served: Served,
) -> None:
    """A node that claims a 1 TiB GPU and says a task ran out of its memory does not end
    the task (no connected device has more) while another owner's node could run it: that
    is its owner's word alone, as a failure it calls final is."""
    alice = await Alice(served).start()
    job_id = alice.job_id
    huge = common_pb2.Device(
        index=0, kind=common_pb2.DEVICE_KIND_CUDA, name="H9000", memory_bytes=1 << 40
    )
    bob, _ = await session(served, Signer.generate(), served.bob_key, "bob's", devices=[huge])
    await bob.write(credit(1))
    [claimed] = (await bob.read()).assign.assignments
    await fail(bob, claimed.attempt_id, 1, True, "CUDA_OOM", "out of memory on the H9000")
    assert await state(served, job_id) == "running"
    await alice.finish([bob], claimed.task_id)  # alice's CPU, less memory than bob claimed


async def test_one_owners_nodes_cannot_pass_a_task_round_by_preempting_it(
    served: Served,
) -> None:
    """A node that hands a task back (PREEMPTED: its owner came back) pays nothing for it,
    and is paused: so its owner's other nodes could take the task in turn, each holding it
    until just short of a straggler, and hold it for ever. Once handed back, the task goes
    to no node of that owner while another owner's node could run it."""
    alice = await Alice(served).start()
    bob1, _ = await session(served, Signer.generate(), served.bob_key, "bob1")
    await bob1.write(credit(1))
    [claimed] = (await bob1.read()).assign.assignments
    bob2, _ = await session(served, Signer.generate(), served.bob_key, "bob2")
    await bob2.write(credit(1))  # waits with credit: nothing is queued
    await fail(bob1, claimed.attempt_id, 1, True, "PREEMPTED", "paused: owner active")
    with pytest.raises(TimeoutError):  # not handed on to bob's other node
        await asyncio.wait_for(bob2.read(), 0.5)
    await alice.finish([bob1, bob2], claimed.task_id)
