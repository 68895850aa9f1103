"""The trust model against an adversary with many free node keys, one account and many
nodes, fake GPUs, or a taste for other clients' blobs: each rule tested at the rule and
through the scheduler, on the in-memory store with a fake clock."""

from pathlib import Path

import pytest

from sparegrid.coordinator.app import App
from sparegrid.coordinator.domain import (
    AttemptState,
    Device,
    Job,
    JobState,
    Replica,
    Requirements,
    Task,
    TaskState,
    node_account,
)
from sparegrid.coordinator.errors import CoordinatorError
from sparegrid.coordinator.services.comparators import Comparators
from sparegrid.coordinator.services.ledger import Payment
from sparegrid.coordinator.services.reputation import Reputations, TrustConfig
from sparegrid.coordinator.services.verification import Outcome, Verifier
from sparegrid.coordinator.store.memory import MemoryStore
from sparegrid.v1 import common_pb2
from sparegrid.wire import sha256_hex
from sparegrid.wire.receipt import sign_batch, verify_countersignature
from tests.coordinator.helpers import FakeNode, make_app
from tests.coordinator.verifying import ALWAYS_CHECK, credit_of, run, submit

TRUSTED = TrustConfig(warmup=0, floor=0.0)  # a vetted node's results go through unchecked


def fleet(app: App, *owners: str) -> list[FakeNode]:
    """Nodes with these owners ("" for a node without an owner account)."""
    nodes = [FakeNode(app, f"n{i}", owner=owner) for i, owner in enumerate(owners)]
    for node in nodes:
        node.connect(credit=0)
    return nodes


def method_of(app: App, job_id: str) -> set[int]:
    return {
        verify_countersignature(
            common_pb2.Receipt.FromString(t.receipt), app.signer.public_key
        ).method
        for t in app.store.list_tasks(job_id)
    }


# --- free keys add no voting power ---------------------------------------------------------


def test_a_fleet_of_fresh_keys_agreeing_on_a_lie_is_never_accepted(tmp_path: Path) -> None:
    app = make_app(tmp_path, trust=TRUSTED)
    sybils = fleet(app, "", "", "")
    job_id = submit(app, 2)
    for node in sybils:
        run(node, b"the same lie")
    assert app.store.task_counts(job_id)[TaskState.SUCCEEDED] == 0
    assert all(credit_of(app, n) == 0 for n in sybils)
    why = app.scheduler.waiting(app.scheduler.jobs[job_id])
    assert "nodes without an owner account wait for a check by a node of an owner account" in why
    assert app.ledger.check().balanced


def test_an_anonymous_result_counts_once_a_vetted_owner_confirms_it(tmp_path: Path) -> None:
    app = make_app(tmp_path, trust=TRUSTED)
    anonymous, owned = fleet(app, "", "carol")
    job_id = submit(app, 1)
    assert run(anonymous) == 1
    assert app.store.task_counts(job_id)[TaskState.QUEUED] == 1  # held for a vetted check
    assert run(owned) == 1
    job = app.store.get_job(job_id)
    assert job is not None and job.state == JobState.SUCCEEDED
    assert method_of(app, job_id) == {common_pb2.VALIDATION_METHOD_CROSS_CHECKED}
    assert credit_of(app, anonymous) == credit_of(app, owned) == 1  # both paid
    assert app.reputations.get(anonymous.id).streak == 1  # checked by a vetted owner
    assert app.reputations.get(owned.id).streak == 0  # only an anonymous node agreed


def test_a_new_vetted_checker_of_an_anonymous_result_needs_a_second_owner(
    tmp_path: Path,
) -> None:
    app = make_app(tmp_path, trust=ALWAYS_CHECK)
    anonymous, owned, other = fleet(app, "", "carol", "dave")
    job_id = submit(app, 1)
    run(anonymous)
    run(owned)  # carol is new: her confirmation alone does not settle it
    assert app.store.task_counts(job_id)[TaskState.QUEUED] == 1
    run(other)
    assert app.store.get_job(job_id).state == JobState.SUCCEEDED  # type: ignore[union-attr]
    assert [credit_of(app, n) for n in (anonymous, owned, other)] == [1, 1, 1]
    assert app.ledger.check().balanced  # the adaptive escrow covers three paid results


def test_a_vetted_owner_outvotes_an_anonymous_lie(tmp_path: Path) -> None:
    app = make_app(tmp_path, trust=TRUSTED)
    liar, owned = fleet(app, "", "carol")
    job_id = submit(app, 1)
    run(liar, b"junk")
    run(owned)
    [task] = app.store.list_tasks(job_id)
    assert task.state == TaskState.SUCCEEDED and task.node_id == owned.id
    assert app.reputations.get(liar.id).strikes == 1 and credit_of(app, liar) == 0


def test_quorum_jobs_go_only_to_vetted_owners_and_say_so(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    anon1, anon2, owned = fleet(app, "", "", "carol")
    job_id = submit(app, 1, replicas=2, quorum=2)
    assert run(anon1) == run(anon2) == 0
    assert run(owned) == 1
    why = app.scheduler.waiting(app.scheduler.jobs[job_id])
    assert why.startswith("policy 2 of 2 needs results from 2 different owners")
    assert "2 device(s) of nodes without an owner account do not count" in why


# --- votes count vetted owners, at the rule --------------------------------------------------


def _job(replicas: int, quorum: int) -> tuple[Job, Task]:
    job = Job("j", "a", "echo", "", b"{}", {}, Requirements(), 3, 1, 1, 1, replicas=replicas)
    job.quorum = quorum
    return job, Task("t", "j", 0, b"{}", [])


def _replica(node: str, owner: str, output: bytes) -> Replica:
    out = [common_pb2.OutputRef(name="out", digest=sha256_hex(output), size=len(output))]
    from sparegrid.coordinator.domain import FileRef

    refs = [FileRef(o.name, o.digest, o.size) for o in out]
    return Replica(f"a-{node}", "t", "j", node, owner, refs, b"")


@pytest.mark.parametrize(
    ("owners", "outcome"),
    [
        (["alice", "alice"], Outcome.PENDING),  # two nodes of one owner are one vote
        (["node:x", "node:y"], Outcome.PENDING),  # nodes without an owner never vote
        (["alice", "node:x"], Outcome.PENDING),  # nor beside an owned node
        (["alice", "bob"], Outcome.ACCEPTED),
    ],
)
def test_a_quorum_counts_vetted_owners_not_nodes(owners: list[str], outcome: Outcome) -> None:
    verifier = Verifier(Reputations(MemoryStore(), _clock(), TrustConfig()), Comparators())
    job, task = _job(2, 2)
    results = [_replica(f"n{i}", owner, b"same") for i, owner in enumerate(owners)]
    decision = verifier.decide(job, task, results, lambda d: b"", lambda: True)
    assert decision.outcome == outcome


def _clock():  # type: ignore[no-untyped-def]
    from sparegrid.coordinator.clock import FakeClock

    return FakeClock()


def test_a_payment_is_booked_once_per_attempt_however_often_it_is_made(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    job_id = submit(app, 1)
    job = app.store.get_job(job_id)
    assert job is not None
    payment = Payment(job, f"{job_id}-0", "attempt-1", "n1", 1, "validated result")
    assert app.ledger.pay([payment]).new == [True]
    assert app.ledger.pay([payment]).new == [False]
    assert app.ledger.pay([payment, payment]).new == [False, False]
    assert app.store.balance(node_account("n1")) == 1
    assert app.ledger.check().balanced is False  # paid outside a settlement: spent != paid
    job.cost_spent = 1
    app.store.update_job(job)
    assert app.ledger.check().balanced


def test_a_batch_sent_again_is_paid_once(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    (node,) = fleet(app, "carol")
    submit(app, 2)
    app.scheduler.grant(node.id, 0, 2)
    app.scheduler.dispatch()
    items = node.sink.take()
    first = node.answer(items)
    again = node.answer(items)
    assert [v.credit for v in first] == [1, 1]
    assert [(v.accepted, v.code, v.credit) for v in again] == [(True, "DUPLICATE", 0)] * 2
    assert credit_of(app, node) == 2 and app.ledger.check().balanced


# --- checks count only nodes that take work ---------------------------------------------------


def test_a_session_that_never_grants_credit_is_not_a_checker(tmp_path: Path) -> None:
    app = make_app(tmp_path, trust=ALWAYS_CHECK)
    worker = FakeNode(app, "worker", owner="carol")
    idle = FakeNode(app, "idle", owner="dave")
    worker.connect(credit=0)
    idle.connect(credit=0, taking_work=False)
    job_id = submit(app, 1)
    run(worker)
    job = app.store.get_job(job_id)
    assert job is not None and job.state == JobState.SUCCEEDED  # not held for dave
    assert method_of(app, job_id) == {common_pb2.VALIDATION_METHOD_UNCHECKED}


# --- hoarding ------------------------------------------------------------------------------


def test_a_node_with_fake_gpus_holds_no_more_than_its_window(tmp_path: Path) -> None:
    app = make_app(tmp_path, lease_seconds=30.0, max_attempt_seconds=100.0)
    hoarder = FakeNode(app, "hoarder", owner="mallory")
    hoarder.node.devices = [Device(i, "cuda", "fake", memory_bytes=80 << 30) for i in range(16)]
    hoarder.connect(credit=1000)
    job_id = submit(app, 50)
    held = hoarder.sink.take()
    assert len(held) == app.scheduler.config.initial_window == 4
    # heartbeats renew its leases, but never past the attempts' maximum age
    for _ in range(10):
        app.clock.advance(20)  # type: ignore[attr-defined]
        app.scheduler.heartbeat(hoarder.id)
        app.scheduler.reap()
    attempts = app.store.get_attempts([a.id for a, _, _ in held])
    assert {a.state.value for a in attempts} == {"expired"}
    assert app.scheduler.window(hoarder.id) == 2  # it lost leases: its window halved
    honest = FakeNode(app, "honest", owner="carol")
    honest.connect(credit=100)
    honest.answer(honest.sink.take())
    assert app.store.task_counts(job_id)[TaskState.SUCCEEDED] >= 4  # the hoarded ones too


def test_a_window_grows_with_the_results_a_node_returns(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    (node,) = fleet(app, "carol")
    submit(app, 100)
    sizes = []
    for _ in range(4):
        app.scheduler.grant(node.id, 0, 100)
        app.scheduler.dispatch()
        items = node.sink.take()
        sizes.append(len(items))
        node.answer(items)
    assert sizes == [4, 8, 16, 32]  # slow start: doubles each round trip


# --- outputs are what the node produced ------------------------------------------------------


def test_a_result_cannot_claim_a_blob_it_did_not_upload(tmp_path: Path) -> None:
    from tests.coordinator.verifying import upload

    app = make_app(tmp_path)
    victim = app.accounts.create("victim", 10)[0]
    secret = b"victim's private input" * 5000
    digest = upload(app, victim.id, secret)
    (thief,) = fleet(app, "mallory")
    job_id = submit(app, 1)
    app.scheduler.grant(thief.id, 0, 1)
    app.scheduler.dispatch()
    [(attempt, task, _)] = thief.sink.take()
    statement = common_pb2.ResultStatement(
        job_id=task.job_id,
        task_id=task.id,
        attempt_id=attempt.id,
        node_id=thief.id,
        outputs=[common_pb2.OutputRef(name="out", digest=digest, size=len(secret))],
        executor="echo",
        executor_version="1",
    ).SerializeToString()
    verdicts = app.intake.results(thief.id, [statement], sign_batch(thief.signer, [statement]), {})
    assert [(v.accepted, v.code) for v in verdicts] == [(False, "OUTPUT_NOT_UPLOADED")]
    alice = app.store.get_account_by_name("alice")
    assert alice is not None and not app.store.blob_owned(digest, alice.id)
    assert app.reputations.get(thief.id).strikes == 1
    assert app.store.get_job(job_id).state == JobState.RUNNING  # type: ignore[union-attr]
    # the attempt ended with its refusal, and its task is queued for another node: an
    # upload afterwards does not make the same result count
    [ended] = app.store.get_attempts([attempt.id])
    assert (ended.state, ended.error_code) == (AttemptState.FAILED, "OUTPUT_NOT_UPLOADED")
    assert app.store.get_tasks([task.id])[0].state == TaskState.QUEUED
    app.store.add_uploads([(attempt.id, digest)])
    verdicts = app.intake.results(thief.id, [statement], sign_batch(thief.signer, [statement]), {})
    assert [(v.accepted, v.code, v.credit) for v in verdicts] == [(False, "STALE", 0)]
    assert not app.store.blob_owned(digest, alice.id)


# --- disputes explain themselves, and never cancel the job -----------------------------------


def test_a_dispute_keeps_its_evidence_and_the_rest_of_the_job_runs(tmp_path: Path) -> None:
    app = make_app(tmp_path, trust=ALWAYS_CHECK)
    liar, honest, third = fleet(app, "mallory", "carol", "dave")
    job_id = submit(app, 2)
    run(liar, b"junk", credit=1)
    run(honest, credit=1)
    [dispute] = app.store.get_disputes(job_id)
    assert dispute.state.value == "open" and dispute.task_index == 0
    nodes = {r["node"]: r for r in dispute.evidence["results"]}  # type: ignore[union-attr]
    assert set(nodes) == {liar.id, honest.id}
    assert nodes[liar.id]["outputs"] == {"out": sha256_hex(b"junk")}
    assert dispute.evidence["comparisons"] == [
        {
            "a": liar.id,
            "b": honest.id,
            "agree": False,
            "detail": "out: digests differ",
            "metrics": {"rule": "digest", "outputs": ["out"]},
        }
    ]
    run(honest, credit=1)  # the other task goes on meanwhile
    run(liar, credit=1)
    assert app.store.task_counts(job_id)[TaskState.SUCCEEDED] == 1
    run(third, credit=1)
    [dispute] = app.store.get_disputes(job_id)
    assert dispute.state.value == "settled"
    assert dispute.evidence["winners"] == [honest.id, third.id]
    assert dispute.evidence["losers"] == [liar.id]
    assert app.store.get_job(job_id).state == JobState.SUCCEEDED  # type: ignore[union-attr]
    assert app.ledger.check().balanced


def test_a_task_without_agreement_fails_alone_and_retry_runs_only_it(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    fleet_ = fleet(app, *[f"o{i}" for i in range(6)])
    job_id = submit(app, 2, replicas=2, quorum=2)  # 2 + 3 attempts: 5 results at most
    for i, node in enumerate(fleet_[:5]):
        run(node, f"answer {i}".encode(), credit=1)  # task 0: every answer differs
    assert app.store.get_job(job_id).state == JobState.RUNNING  # type: ignore[union-attr]
    run(fleet_[0], credit=1)
    run(fleet_[1], credit=1)  # task 1 agrees
    job = app.store.get_job(job_id)
    assert job is not None and job.state == JobState.FAILED
    assert "1 of 2 task(s) failed" in job.error and "NO_AGREEMENT" in job.error
    assert f"sparegrid job retry {job_id} --failed" in job.error
    alice = app.store.get_account_by_name("alice")
    assert alice is not None
    held = job.cost_held
    retried = app.retries.retry(alice, job_id)
    assert retried.state == JobState.QUEUED and retried.cost_held == held + 2
    assert app.store.task_counts(job_id)[TaskState.QUEUED] == 1  # task 1 keeps its result
    run(fleet_[2], credit=1)
    run(fleet_[3], credit=1)
    job = app.store.get_job(job_id)
    assert job is not None and job.state == JobState.SUCCEEDED and job.error == ""
    assert app.ledger.check().balanced
    with pytest.raises(CoordinatorError) as err:
        app.retries.retry(alice, job_id)
    assert err.value.code == "JOB_NOT_RETRYABLE"
    # not "job J is succeeded"
    assert err.value.message == (
        f"job {job_id} already succeeded: only a failed or cancelled job is retried"
    )


# --- stake and slashing ---------------------------------------------------------------------


def test_a_stake_makes_an_owner_vetted_and_proven_fraud_is_slashed_to_the_client(
    tmp_path: Path,
) -> None:
    from sparegrid.coordinator.services.identity import IdentityConfig

    app = make_app(tmp_path, trust=ALWAYS_CHECK, identity=IdentityConfig(min_stake=50))
    owners = ["mallory", "carol", "dave"]
    for name in owners:
        app.accounts.create(name, 100)
    liar, honest, third = fleet(app, *owners)
    assert not app.identities.vetted("carol")
    with pytest.raises(CoordinatorError) as err:
        app.identities.add_stake("carol", 101, "k0")
    assert err.value.code == "INSUFFICIENT_CREDIT"
    for name in owners:
        assert app.identities.add_stake(name, 60, f"stake-{name}") == 60
    assert app.identities.add_stake("carol", 60, "stake-carol") == 60  # the same key: once
    assert app.identities.vetted("carol")
    job_id = submit(app, 1)
    run(liar, b"junk")
    run(honest)
    run(third)
    assert app.identities.stake("mallory") == 50  # 10 x the task's 1 credit
    alice_gets = [
        e for e in app.store.ledger_entries("client:alice") if e.reason.startswith("slashed")
    ]
    assert [e.amount for e in alice_gets] == [10] and alice_gets[0].job_id == job_id
    assert app.ledger.check().balanced
    # a stake stays locked while its owner's nodes are around
    with pytest.raises(CoordinatorError) as err:
        app.identities.release_stake("carol", 60, "u1")
    assert err.value.code == "STAKE_LOCKED"
    app.clock.advance(25 * 3600)  # type: ignore[attr-defined]
    assert app.identities.release_stake("carol", 60, "u1") == 0
    assert not app.identities.vetted("carol")
    assert app.store.balance("client:carol") == 100  # all of it back (earnings are the node's)
    assert app.ledger.check().balanced


def test_a_quorum_that_no_set_of_accounts_could_form_is_refused(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    submit(app, 1)  # creates alice: one account
    with pytest.raises(CoordinatorError) as err:
        submit(app, 1, replicas=3, quorum=2)
    assert err.value.code == "QUORUM_UNREACHABLE" and "3 owner accounts" in err.value.message


# --- a node honest until trusted, then cheating --------------------------------------------


def test_a_trusted_node_that_turns_has_nothing_accepted_past_its_first_check(
    tmp_path: Path,
) -> None:
    import random

    app = make_app(tmp_path, trust=TrustConfig(warmup=20, floor=0.05))
    app.intake.settlement.vouching.rng = random.Random(3)
    app.reputations._rng = random.Random(3)
    turncoat, honest, third = (FakeNode(app, n, owner=f"o-{n}") for n in ("t", "h", "x"))
    app.reputations.validated([turncoat.id] * 1000)  # long honest: checked 5% of the time
    for node in (turncoat, honest, third):
        node.connect(credit=0)
    job_id = submit(app, 60)
    assert run(turncoat, b"junk", credit=100) == 60
    assert app.store.task_counts(job_id)[TaskState.SUCCEEDED] == 0  # all held
    for _ in range(50):
        if not (run(honest, credit=100) + run(third, credit=100)):
            break
    job = app.store.get_job(job_id)
    assert job is not None and job.state == JobState.SUCCEEDED
    outputs = {t.outputs[0].digest for t in app.store.list_tasks(job_id)}
    assert outputs == {sha256_hex(b"ok")}  # not one wrong answer stands
    assert credit_of(app, turncoat) == 0
    assert app.reputations.get(turncoat.id).strikes >= 1
    assert app.ledger.check().balanced


def test_a_hoarder_loses_its_tasks_once_they_run_far_longer_than_the_others(
    tmp_path: Path,
) -> None:
    app = make_app(tmp_path, lease_seconds=30.0)
    hoarder = FakeNode(app, "hoarder", owner="mallory")
    hoarder.connect(credit=100)
    job_id = submit(app, 30)
    held = hoarder.sink.take()
    assert len(held) == 4
    honest = FakeNode(app, "honest", owner="carol")
    honest.connect(credit=0)
    for _ in range(12):  # each of its tasks takes a second
        assert run(honest, credit=1) == 1
        app.clock.advance(1)  # type: ignore[attr-defined]
        app.scheduler.heartbeat(hoarder.id)
    app.clock.advance(61)  # type: ignore[attr-defined]
    app.scheduler.heartbeat(hoarder.id)
    app.scheduler.reap()  # 61 s: over 20x what 9 in 10 tasks took, and the 60 s floor
    attempts = app.store.get_attempts([a.id for a, _, _ in held])
    assert {a.error_code for a in attempts} == {"STRAGGLER"}
    assert sorted(hoarder.sink.cancelled) == sorted(a.id for a in attempts)
    for _ in range(5):  # what it grabs next goes the same way
        while run(honest, credit=10):
            pass
        app.clock.advance(61)  # type: ignore[attr-defined]
        app.scheduler.reap()
    job = app.store.get_job(job_id)
    assert job is not None and job.state == JobState.SUCCEEDED
    assert set(app.store.node_failures(job_id)) == {hoarder.id}  # kept off the job
    assert app.scheduler.window(hoarder.id) <= 2


def test_made_up_results_returned_at_once_make_no_honest_node_a_straggler(
    tmp_path: Path,
) -> None:
    """Fresh keys answering a job's first tasks at once with made-up results (on "GPUs"
    of the kind honest nodes have) do not set what a straggler is: only accepted results'
    times count, so an honest node's tasks that take minutes are not taken back at the
    60 s floor, nor is it kept off the job."""
    gpu = Device(index=0, kind="cuda", name="gpu", memory_bytes=24 << 30)
    app = make_app(tmp_path, lease_seconds=30.0)
    honest = FakeNode(app, "honest", owner="carol", device=gpu)
    honest.connect(credit=0)
    job_id = submit(app, 20)
    for n in range(10):
        liar = FakeNode(app, f"liar{n}", owner="", device=gpu)
        liar.connect(credit=1)
        assert all(v.accepted for v in liar.answer(liar.sink.take(), b"made up"))
    app.scheduler.grant(honest.id, 0, 4)
    app.scheduler.dispatch()
    held = honest.sink.take()
    assert len(held) == 4
    for _ in range(30):  # each of its tasks takes five minutes
        app.clock.advance(10)  # type: ignore[attr-defined]
        app.scheduler.heartbeat(honest.id)
        app.scheduler.reap()
    attempts = app.store.get_attempts([a.id for a, _, _ in held])
    assert {a.state for a in attempts} == {AttemptState.RUNNING}
    assert all(v.accepted for v in honest.answer(held))
    assert honest.id not in app.store.node_failures(job_id)  # the liars' were outvoted
