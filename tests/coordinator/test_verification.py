"""Verification policies, reputation and credit, on the in-memory store with fake nodes."""

import random
from pathlib import Path

import pytest

from sparegrid.coordinator.app import App
from sparegrid.coordinator.domain import (
    AttemptState,
    JobState,
    ReplicaState,
    Standing,
    TaskState,
    node_account,
)
from sparegrid.coordinator.errors import CoordinatorError
from sparegrid.coordinator.services.jobs import JobSpec
from sparegrid.coordinator.services.reputation import TrustConfig
from sparegrid.v1 import common_pb2
from sparegrid.wire import Signer
from sparegrid.wire.receipt import verify_countersignature, verify_receipt
from tests.coordinator.helpers import FakeNode, make_app, make_client
from tests.coordinator.verifying import ALWAYS_CHECK, credit_of, nodes, run, submit, upload


def test_two_of_two_pays_both_owners_and_countersigns(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    a, b = nodes(app, "alice-co", "bob-co")
    job_id = submit(app, 3, replicas=2, quorum=2)
    assert run(a) == 3
    assert app.store.get_job(job_id).state == JobState.RUNNING  # type: ignore[union-attr]
    assert run(a) == 0  # its own tasks never come back to the same owner
    assert run(b) == 3
    job = app.store.get_job(job_id)
    assert job is not None and job.state == JobState.SUCCEEDED
    assert credit_of(app, a) == credit_of(app, b) == 3
    assert job.cost_spent == 6 and app.ledger.check().balanced
    for task in app.store.list_tasks(job_id):
        receipt = common_pb2.Receipt.FromString(task.receipt)
        verify_receipt(receipt)
        validation = verify_countersignature(receipt, app.signer.public_key)
        assert validation.method == common_pb2.VALIDATION_METHOD_QUORUM
        assert sorted(validation.agreeing_nodes) == sorted([a.id, b.id])
        assert validation.credit == 1


def test_a_quorum_never_counts_one_owner_twice(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    a1, a2 = nodes(app, "same", "same")
    job_id = submit(app, 2, replicas=2, quorum=2)
    assert run(a1) == 2
    assert run(a2) == 0
    assert app.store.task_counts(job_id)[TaskState.QUEUED] == 2
    assert credit_of(app, a1) == 0


def test_two_of_three_rejects_the_odd_one_and_strikes_it(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    good1, bad, good2 = nodes(app, "o1", "o2", "o3")
    job_id = submit(app, 1, replicas=3, quorum=2)
    run(good1)
    run(bad, b"wrong")
    run(good2)
    job = app.store.get_job(job_id)
    assert job is not None and job.state == JobState.SUCCEEDED
    assert (credit_of(app, good1), credit_of(app, bad), credit_of(app, good2)) == (1, 0, 1)
    rep = app.reputations.get(bad.id)
    assert (rep.invalid, rep.strikes, rep.streak) == (1, 1, 0)
    assert app.reputations.get(good1.id).streak == 1
    [task] = app.store.list_tasks(job_id)
    states = {r.node_id: r.state for r in app.store.get_replicas([task.id])}
    assert states == {
        good1.id: ReplicaState.VALID,
        bad.id: ReplicaState.INVALID,
        good2.id: ReplicaState.VALID,
    }
    rejected = [a for a in app.store.running_attempts() if a.node_id == bad.id]
    assert rejected == []
    assert app.ledger.check().balanced


def test_disagreement_under_two_of_two_runs_a_tie_breaker(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    a, b, c = nodes(app, "o1", "o2", "o3")
    job_id = submit(app, 1, replicas=2, quorum=2)
    run(a, b"wrong")
    run(b)
    assert app.store.get_job(job_id).state == JobState.RUNNING  # type: ignore[union-attr]
    run(c)
    assert app.store.get_job(job_id).state == JobState.SUCCEEDED  # type: ignore[union-attr]
    assert (credit_of(app, a), credit_of(app, b), credit_of(app, c)) == (0, 1, 1)


def test_no_agreement_within_the_attempt_limit_fails_the_task(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    fleet = nodes(app, *[f"o{i}" for i in range(6)])
    job_id = submit(app, 1, replicas=2, quorum=2)  # 2 + 3 attempts = 5 results at most
    for i, node in enumerate(fleet[:5]):
        run(node, f"answer {i}".encode())
    job = app.store.get_job(job_id)
    assert job is not None and job.state == JobState.FAILED
    assert "NO_AGREEMENT" in job.error
    assert all(credit_of(app, n) == 0 for n in fleet)
    assert app.ledger.check().balanced
    assert app.store.balance("client:alice") == 1000


def test_adaptive_cross_checks_a_new_node(tmp_path: Path) -> None:
    app = make_app(tmp_path, trust=ALWAYS_CHECK)
    a, b = nodes(app, "o1", "o2")
    job_id = submit(app, 2)
    assert run(a) == 2
    assert run(b) == 2
    job = app.store.get_job(job_id)
    assert job is not None and job.state == JobState.SUCCEEDED
    method = {
        verify_countersignature(
            common_pb2.Receipt.FromString(t.receipt), app.signer.public_key
        ).method
        for t in app.store.list_tasks(job_id)
    }
    assert method == {common_pb2.VALIDATION_METHOD_CROSS_CHECKED}
    # up to 3 paid results per task were held; what was not spent went back
    assert job.cost_held == 6 and job.cost_spent == 4


def test_adaptive_falls_back_to_unchecked_with_one_owner_and_says_so(tmp_path: Path) -> None:
    app = make_app(tmp_path, trust=ALWAYS_CHECK)
    (a,) = nodes(app, "only")
    job_id = submit(app, 2)
    assert run(a) == 2
    job = app.store.get_job(job_id)
    assert job is not None and job.state == JobState.SUCCEEDED
    for task in app.store.list_tasks(job_id):
        v = verify_countersignature(
            common_pb2.Receipt.FromString(task.receipt), app.signer.public_key
        )
        assert v.method == common_pb2.VALIDATION_METHOD_UNCHECKED
        assert "no node of another owner" in v.detail
    assert credit_of(app, a) == 2
    assert app.reputations.get(a.id).streak == 0  # unchecked results earn no trust
    assert app.store.balance("client:alice") == 998


def test_check_rate_falls_with_the_streak_to_the_floor_and_resets(tmp_path: Path) -> None:
    app = make_app(tmp_path, trust=TrustConfig(warmup=20, floor=0.05))
    reps = app.reputations
    assert reps.check_rate("new") == 1.0
    reps.validated(["n"] * 19)
    assert reps.check_rate("n") == 1.0
    reps.validated(["n"] * 81)
    assert reps.check_rate("n") == pytest.approx(20 / 101)
    reps.validated(["n"] * 1000)
    assert reps.check_rate("n") == 0.05
    reps.invalid("n", "test")
    assert reps.check_rate("n") == 1.0


def test_adaptive_trusts_a_proven_node_once_a_later_check_vouches(tmp_path: Path) -> None:
    app = make_app(tmp_path, trust=TrustConfig(warmup=2, floor=0.05))
    app.reputations._rng = random.Random(7)
    app.intake.settlement.vouching.rng = random.Random(7)
    a, b = FakeNode(app, "a", owner="o1"), FakeNode(app, "b", owner="o2")
    app.reputations.validated([a.id] * 1000)  # its record: trust, and a wide window
    a.connect(credit=0)
    b.connect(credit=0)
    job_id = submit(app, 40)
    assert run(a, credit=100) == 40
    # held, not yet accepted: a few of them, picked at random, go to b to be checked
    assert app.store.task_counts(job_id)[TaskState.SUCCEEDED] == 0
    checks = 0
    while (ran := run(b, credit=100)) > 0:
        checks += ran
    job = app.store.get_job(job_id)
    assert job is not None and job.state == JobState.SUCCEEDED
    assert 1 <= checks <= 8  # 40 results vouched for by a handful of checks
    details = [
        verify_countersignature(common_pb2.Receipt.FromString(t.receipt), app.signer.public_key)
        for t in app.store.list_tasks(job_id)
    ]
    vouched = [v for v in details if v.method == common_pb2.VALIDATION_METHOD_TRUSTED]
    assert len(vouched) == 40 - checks and all("vouched for" in v.detail for v in vouched)
    assert credit_of(app, a) == 40 and credit_of(app, b) == checks
    assert app.ledger.check().balanced


@pytest.mark.parametrize("seed", range(4))  # the check picked at once, or later
def test_a_trusted_nodes_late_result_is_compared_with_the_next_not_held(
    tmp_path: Path, seed: int
) -> None:
    """A trusted node's result arriving after its lease ran out, its task already given
    to another node: it was held for a later check of its node besides, so the task was
    both running and held. The other node's result was accepted, the job succeeded, and
    then the held copy was cancelled over it (the client found its task cancelled), or
    put back in the queue as a stale copy (on PostgreSQL, a lease the database refused,
    failing a whole group commit). Now it waits among the task's replicas and is compared
    with the next result, both paid."""
    app = make_app(tmp_path, trust=TrustConfig(warmup=2, floor=0.05))
    app.intake.settlement.vouching.rng = random.Random(seed)
    a, b = FakeNode(app, "a", owner="o1"), FakeNode(app, "b", owner="o2")
    app.reputations.validated([a.id] * 1000)  # a's record lets its results be held
    a.connect(credit=0)
    b.connect(credit=0)
    job_id = submit(app, 1)
    app.scheduler.grant(a.id, 0, 1)
    app.scheduler.dispatch()
    late = a.sink.take()
    app.clock.advance(app.settings.lease_seconds + 1)
    assert app.scheduler.reap() == 1  # a's lease ran out: the task goes to b
    app.scheduler.grant(b.id, 0, 1)
    app.scheduler.dispatch()
    given = b.sink.take()  # leased to b, not answered yet
    assert len(given) == 1
    assert all(v.accepted for v in a.answer(late))  # late, and trusted
    assert all(v.accepted for v in b.answer(given))
    app.clock.advance(10**6)
    app.intake.settlement.pick_overdue()
    for node in (a, b):
        assert run(node, credit=5) == 0  # nothing left to lease
    job = app.store.get_job(job_id)
    assert job is not None and job.state == JobState.SUCCEEDED
    assert app.store.task_counts(job_id)[TaskState.SUCCEEDED] == 1
    assert credit_of(app, a) == 1 and credit_of(app, b) == 1  # both did it, both agree
    assert app.ledger.check().balanced


@pytest.mark.parametrize("seed", range(4))
def test_a_held_result_decided_by_a_late_one_is_vouched_for_by_no_check(
    tmp_path: Path, seed: int
) -> None:
    """A trusted node's result held for a later check of its node, when another node's
    late result for the same task arrived and agreed: the task was accepted then, and
    again when the check of the trusted node vouched for its held results (each of its
    winners paid twice over, the job's open tasks counted down twice). Found by the
    settlement model (tests/coordinator/test_settlement_model.py)."""
    app = make_app(tmp_path, trust=TrustConfig(warmup=2, floor=0.05))
    app.reputations.wants_check = lambda node_id: False  # a's results are never checked
    app.intake.settlement.vouching.rng = random.Random(seed)
    app.intake.settlement.vouching._check_rate = lambda node_id: 0.0  # no check picked at once
    a, b = FakeNode(app, "a", owner="o1"), FakeNode(app, "b", owner="o2")
    app.reputations.validated([a.id] * 1000)  # a's results are held for a check of a
    a.connect(credit=0)
    b.connect(credit=0)
    job_id = submit(app, 2)
    app.scheduler.grant(b.id, 0, 1)
    app.scheduler.dispatch()
    late = b.sink.take()  # b's lease of the first task runs out
    app.clock.advance(app.settings.lease_seconds + 1)
    assert app.scheduler.reap() == 1
    assert run(a, credit=2) == 2  # both held for a check of a (one may be that check)
    assert all(v.accepted for v in b.answer(late))  # agrees with a's result: decided
    app.clock.advance(10**6)
    app.intake.settlement.pick_overdue()  # a check of a: its other held result
    while run(b, credit=5):
        pass
    job = app.store.get_job(job_id)
    assert job is not None and job.state == JobState.SUCCEEDED
    assert (job.tasks_succeeded, app.store.task_counts(job_id)[TaskState.SUCCEEDED]) == (2, 2)
    [first] = app.store.get_tasks([late[0][1].id])  # decided by b's late result, as it was
    validation = verify_countersignature(
        common_pb2.Receipt.FromString(first.receipt), app.signer.public_key
    )
    assert validation.method == common_pb2.VALIDATION_METHOD_CROSS_CHECKED
    assert credit_of(app, a) == 2  # once for each task
    assert app.ledger.check().balanced
    for node in (a, b):
        assert run(node, credit=5) == 0  # nothing requeued behind the job's end


@pytest.mark.parametrize("order", ["late first", "late last"])
def test_two_attempts_of_one_task_in_one_batch_decide_it_once(tmp_path: Path, order: str) -> None:
    """A slow node whose lease ran out took the same task again, and returned both
    results in one batch: the first decided the task and cancelled the other attempt, and
    settling the second raised (an attempt cannot go from cancelled to succeeded), failing
    the whole batch; in the other order the task was decided twice. Found by the
    settlement model."""
    app = make_app(tmp_path)
    (a,) = nodes(app, "o1")
    job_id = submit(app, 1)
    app.scheduler.grant(a.id, 0, 1)
    app.scheduler.dispatch()
    first = a.sink.take()
    app.clock.advance(app.settings.lease_seconds + 1)
    assert app.scheduler.reap() == 1  # the task comes back, to the same node
    app.scheduler.grant(a.id, 0, 1)
    app.scheduler.dispatch()
    second = a.sink.take()
    assert [t.id for _, t, _ in second] == [t.id for _, t, _ in first]
    both = first + second if order == "late first" else second + first
    verdicts = a.answer(both)
    assert all(v.accepted for v in verdicts)
    assert sum(v.credit for v in verdicts) == 1  # paid once
    job = app.store.get_job(job_id)
    assert job is not None and job.state == JobState.SUCCEEDED and job.tasks_succeeded == 1
    assert credit_of(app, a) == 1 and app.ledger.check().balanced
    assert run(a, credit=5) == 0


def test_repeated_invalid_results_quarantine_the_node(tmp_path: Path) -> None:
    app = make_app(tmp_path, trust=ALWAYS_CHECK)
    bad, g1, g2 = nodes(app, "bad", "g1", "g2")
    for _ in range(3):  # one credit each: no node holds any when the next job comes
        submit(app, 1)
        run(bad, b"junk", credit=1)
        run(g1, credit=1)
        run(g2, credit=1)
    rep = app.reputations.get(bad.id)
    assert rep.standing == Standing.QUARANTINED and "3 invalid results" in rep.reason
    app.scheduler.drain(g1.id)
    app.scheduler.drain(g2.id)
    submit(app, 1)
    assert run(bad) == 0  # no work while quarantined
    app.reputations.reinstate(bad.id, "fixed its memory")
    assert run(bad) == 1
    assert app.ledger.check().balanced


def test_ban_stops_work(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    (a,) = nodes(app, "o1")
    app.reputations.ban(a.id, "abuse")
    submit(app, 1)
    assert run(a) == 0
    assert app.reputations.get(a.id).standing == Standing.BANNED


def test_forged_batch_and_unleased_claims_strike_and_pay_nothing(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    a, b = nodes(app, "o1", "o2")
    submit(app, 1)
    app.scheduler.grant(a.id, 0, 1)
    app.scheduler.dispatch()
    items = a.sink.take()
    verdicts = a.answer(items, signer=Signer.generate())
    assert [v.code for v in verdicts] == ["BAD_SIGNATURE"]
    claimed = b.answer(items)  # b claims a's lease
    assert [(v.accepted, v.code) for v in claimed] == [(False, "NOT_LEASED")]
    assert app.reputations.get(a.id).strikes == 1
    assert app.reputations.get(b.id).strikes == 1
    assert credit_of(app, a) == credit_of(app, b) == 0


def test_bad_policies_are_refused_and_change_nothing(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    make_client(app)
    for replicas, quorum, words in [
        (1, 1, "replicas must be 0"),
        (2, 1, "quorum must be from 2"),
        (4, 2, "not a majority"),
        (11, 6, "replicas must be 0"),
        (0, 2, "replicas must be 0"),
    ]:
        with pytest.raises(CoordinatorError, match=words) as info:
            submit(app, 1, replicas, quorum)
        assert info.value.code == "BAD_POLICY"
    assert app.store.list_jobs() == []
    assert app.store.balance("client:alice") == 1000


def test_credit_follows_work_units_and_the_price_table(tmp_path: Path) -> None:
    from sparegrid.coordinator.services.prices import Price

    app = make_app(tmp_path, prices={"checksum": Price(3, 1000)})
    account = make_client(app)
    data = b"x" * 5000
    digest = upload(app, account.id, data)
    (a,) = nodes(app, "o1")
    spec = JobSpec(kind="checksum", params=b'{"tasks": 2}', inputs={"data": digest})
    job = app.jobs.submit(account, spec)
    assert [t.work for t in app.store.list_tasks(job.id)] == [2500, 2500]
    assert job.cost_held == 2 * 8 * 3  # ceil(2500 * 3 / 1000) = 8, 2 tasks, up to 3 results
    run(a)
    assert credit_of(app, a) == 16
    entries = app.store.ledger_entries(node_account(a.id))
    assert {(e.job_id, e.amount) for e in entries} == {(job.id, 8)}
    assert all(e.task_id and "validated result" in e.reason for e in entries)
    assert app.ledger.check().balanced


def test_pending_results_survive_a_restart(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    a, b = nodes(app, "o1", "o2")
    job_id = submit(app, 1, replicas=2, quorum=2)
    run(a)
    app.scheduler.jobs.clear()
    app.scheduler.sessions.clear()
    app.start_services()
    active = app.scheduler.jobs[job_id]
    assert [r.node_id for rs in active.replicas.values() for r in rs] == [a.id]
    a.connect(credit=5)
    assert a.sink.take() == []  # still excluded after the restart
    b.connect(credit=0)
    run(b)
    assert app.store.get_job(job_id).state == JobState.SUCCEEDED  # type: ignore[union-attr]
    attempts = app.store.get_attempts(
        [r.attempt_id for r in app.store.get_replicas([f"{job_id}-0"])]
    )
    assert {x.state for x in attempts} == {AttemptState.SUCCEEDED}


def test_a_known_answer_task_catches_nodes_that_agree_on_a_lazy_answer(tmp_path: Path) -> None:
    from sparegrid.coordinator.services.canaries import CANARY_ACCOUNT, CanaryConfig

    app = make_app(tmp_path, trust=ALWAYS_CHECK, canaries=CanaryConfig(rate=1.0))
    g1, g2, lazy = nodes(app, "g1", "g2", "lazy")
    job_id = submit(app, 1, replicas=2, quorum=2)
    run(g1)
    run(g2)
    assert app.store.get_job(job_id).state == JobState.SUCCEEDED  # type: ignore[union-attr]
    [canary] = [j for j in app.scheduler.jobs.values() if j.owner == CANARY_ACCOUNT]
    assert run(g1) == run(g2) == 0  # never to the owners that made the known answer
    app.scheduler.grant(lazy.id, 0, 1)
    app.scheduler.dispatch()
    [(attempt, task, kind)] = lazy.sink.take()
    original = app.store.list_tasks(job_id)[0]
    assert (kind, task.params, task.inputs) == ("echo", original.params, original.inputs)
    assert lazy.answer([(attempt, task, kind)], b"")[0].accepted  # looks like any result
    assert app.store.get_job(canary.job.id).state == JobState.FAILED  # type: ignore[union-attr]
    assert app.reputations.get(lazy.id).strikes == 1
    assert credit_of(app, lazy) == 0
    assert app.ledger.check().balanced


def test_no_known_answer_task_is_made_that_no_connected_owner_could_run(
    tmp_path: Path,
) -> None:
    """On a network of two owners, a canary of what both agreed on could go to nobody: it
    would sit queued for good (and in the queue's metrics), so none is made."""
    from sparegrid.coordinator.services.canaries import CANARY_ACCOUNT, CanaryConfig

    app = make_app(tmp_path, trust=ALWAYS_CHECK, canaries=CanaryConfig(rate=1.0))
    g1, g2 = nodes(app, "g1", "g2")
    job_id = submit(app, 3, replicas=2, quorum=2)
    for _ in range(3):
        run(g1, credit=1)
        run(g2, credit=1)
    assert app.store.get_job(job_id).state == JobState.SUCCEEDED  # type: ignore[union-attr]
    assert [j for j in app.scheduler.jobs.values() if j.owner == CANARY_ACCOUNT] == []


def test_no_known_answer_task_is_made_once_the_ledger_can_issue_no_more(tmp_path: Path) -> None:
    """A canary is paid for by a grant: one past the 2^63 - 1 credit the ledger holds in
    all is refused, and the result it was offered for is settled as ever, without one."""
    from sparegrid.coordinator.domain import MAX_BALANCE
    from sparegrid.coordinator.services.canaries import CANARY_ACCOUNT, CanaryConfig

    app = make_app(tmp_path, trust=ALWAYS_CHECK, canaries=CanaryConfig(rate=1.0))
    g1, g2, _ = nodes(app, "g1", "g2", "g3")
    job_id = submit(app, 1, replicas=2, quorum=2)
    app.ledger.grant("alice", MAX_BALANCE - app.accounts.issued(), key="all of it")
    run(g1)
    run(g2)
    assert app.store.get_job(job_id).state == JobState.SUCCEEDED  # type: ignore[union-attr]
    assert [j for j in app.scheduler.jobs.values() if j.owner == CANARY_ACCOUNT] == []
    assert credit_of(app, g1) == credit_of(app, g2) == 1
    assert app.ledger.check().balanced


def one_canary(tmp_path: Path) -> tuple[App, FakeNode, FakeNode, FakeNode]:
    """g1 and g2 agree on a task, which comes back as one known-answer task."""
    from sparegrid.coordinator.services.canaries import CanaryConfig

    app = make_app(tmp_path, trust=ALWAYS_CHECK, canaries=CanaryConfig(rate=1.0))
    g1, g2, g3 = nodes(app, "g1", "g2", "g3")
    submit(app, 1, replicas=2, quorum=2)
    run(g1)
    run(g2)
    app.canaries.config.rate = 0.0
    return app, g1, g2, g3


def test_a_known_answer_task_stays_away_from_its_owners_after_a_restart(tmp_path: Path) -> None:
    from sparegrid.coordinator.services.canaries import CANARY_ACCOUNT

    app, g1, g2, g3 = one_canary(tmp_path)
    app.scheduler.jobs.clear()
    app.scheduler.sessions.clear()
    app.start_services()
    [canary] = [j for j in app.scheduler.jobs.values() if j.owner == CANARY_ACCOUNT]
    g1.connect(credit=5)
    g2.connect(credit=5)
    assert g1.sink.take() == g2.sink.take() == []  # the owners that made the answer
    g3.connect(credit=0)
    assert run(g3) == 1
    assert app.store.get_job(canary.job.id).state == JobState.SUCCEEDED  # type: ignore[union-attr]
    assert credit_of(app, g1) == credit_of(app, g2) == 1  # the original task only
    assert credit_of(app, g3) == 1
    assert app.ledger.check().balanced


def test_a_right_answer_to_a_known_answer_task_is_paid_and_earns_trust(tmp_path: Path) -> None:
    app, _, _, g3 = one_canary(tmp_path)
    assert run(g3) == 1
    assert credit_of(app, g3) == 1
    assert app.reputations.get(g3.id).streak == 1
    alice = app.store.get_account_by_name("alice")
    assert alice is not None
    canaries = [j for j in app.store.list_jobs() if j.account_id != alice.id]
    [task] = app.store.list_tasks(canaries[0].id)
    validation = verify_countersignature(
        common_pb2.Receipt.FromString(task.receipt), app.signer.public_key
    )
    assert validation.method == common_pb2.VALIDATION_METHOD_KNOWN_ANSWER
    assert app.ledger.check().balanced


def test_a_held_result_is_accepted_unchecked_when_the_checkers_leave(tmp_path: Path) -> None:
    app = make_app(tmp_path, trust=ALWAYS_CHECK)
    a, b = nodes(app, "o1", "o2")
    job_id = submit(app, 1)
    run(a)
    app.intake.settle_stranded()  # b could still check it: nothing happens
    assert app.store.get_job(job_id).state == JobState.RUNNING  # type: ignore[union-attr]
    app.scheduler.disconnect(b.id, b.sink)
    app.intake.settle_stranded()
    job = app.store.get_job(job_id)
    assert job is not None and job.state == JobState.SUCCEEDED
    [task] = app.store.list_tasks(job_id)
    v = verify_countersignature(common_pb2.Receipt.FromString(task.receipt), app.signer.public_key)
    assert v.method == common_pb2.VALIDATION_METHOD_UNCHECKED and "left" in v.detail
    assert credit_of(app, a) == 1 and app.ledger.check().balanced


def test_disagreeing_results_wait_for_a_third_owner_and_the_job_says_why(
    tmp_path: Path,
) -> None:
    app = make_app(tmp_path, trust=ALWAYS_CHECK)
    a, b = nodes(app, "o1", "o2")
    job_id = submit(app, 2)
    run(a, b"one answer", credit=1)
    run(b, b"another answer", credit=1)
    run(a, credit=1)
    run(b, credit=1)  # the second task: they agree
    app.intake.settle_stranded()
    active = app.scheduler.jobs[job_id]  # still running: a dispute never cancels the job
    assert app.store.task_counts(job_id)[TaskState.QUEUED] == 1
    why = app.scheduler.waiting(active)
    assert "1 task(s) have results of different owners that disagree" in why
    standings = {r.node_id: r.invalid for r in app.store.get_reputations()}
    assert standings.get(a.id, 0) == standings.get(b.id, 0) == 0  # nobody is struck yet
    (c,) = nodes(app, "o3")
    assert app.scheduler.waiting(active) == ""
    run(c, b"one answer")
    job = app.store.get_job(job_id)
    assert job is not None and job.state == JobState.SUCCEEDED
    assert (credit_of(app, a), credit_of(app, b), credit_of(app, c)) == (2, 1, 1)
    assert app.reputations.get(b.id).strikes == 1
    assert app.ledger.check().balanced
