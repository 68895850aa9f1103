"""Held results (vouching.py) never wait for a check that will not come: found by the
stateful model (test_settlement_model.py), each case made deterministic here."""

import random
from pathlib import Path

from sparegrid.coordinator.app import App
from sparegrid.coordinator.domain import Attempt, JobState, Task, TaskState
from sparegrid.coordinator.services.jobs import JobSpec
from sparegrid.coordinator.services.reputation import TrustConfig
from tests.coordinator.helpers import FakeNode, make_app, make_client
from tests.coordinator.verifying import credit_of, run, submit

Item = tuple[Attempt, Task, str]


class Fixed(random.Random):
    """Random choices made fixed: `random()` answers `value`, `choice` the first."""

    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value

    def choice(self, seq):  # type: ignore[no-untyped-def, override]
        return seq[0]


def trusted_pair(tmp_path: Path) -> tuple[App, FakeNode, FakeNode]:
    """a: trusted, each result held (never picked for a check when held, never checked
    at once); b: a node of another owner, to check it."""
    app = make_app(tmp_path, trust=TrustConfig(warmup=2, floor=0.05))
    app.reputations._rng = Fixed(0.99)
    app.intake.settlement.vouching.rng = Fixed(0.99)
    a, b = FakeNode(app, "a", owner="o1"), FakeNode(app, "b", owner="o2")
    app.reputations.validated([a.id] * 1000)
    a.connect(credit=0)
    b.connect(credit=0)
    return app, a, b


def held_twice(
    app: App, a: FakeNode, b: FakeNode, max_attempts: int = 0
) -> tuple[str, str, list[Item]]:
    """Results of a held in two jobs; the second's picked for a check of a, which vouches
    for the first's (whose other task b holds, never answered). Returns (the job of the
    check, the other job, what b holds)."""
    alice = app.store.get_account_by_name("alice") or make_client(app)

    def submit(tasks: int) -> str:
        params = f'{{"tasks": {tasks}, "data": "hi"}}'.encode()
        return app.jobs.submit(alice, JobSpec("echo", params=params, max_attempts=max_attempts)).id

    first = submit(2)
    assert run(a, credit=1) == 1  # held
    app.scheduler.grant(b.id, 0, 1)
    app.scheduler.dispatch()
    kept = b.sink.take()
    assert len(kept) == 1  # the first job's other task, left running
    second = submit(1)
    assert run(a, credit=1) == 1  # held, and its job has nothing else: a check is picked
    [(picked, pick)] = app.intake.settlement.vouching.picks.items()
    assert picked == f"{second}-0" and [h.task.id for h in pick.vouched] == [f"{first}-0"]
    assert picked in app.scheduler.jobs[second].queue
    return second, first, kept


def drain(app: App, *fleet: FakeNode, rounds: int = 5) -> None:
    for _ in range(rounds):
        for node in fleet:
            run(node, credit=5)
        app.clock.advance(31)
        app._reap()


def test_a_held_result_is_checked_again_when_the_job_of_its_check_is_cancelled(
    tmp_path: Path,
) -> None:
    """The check picked for a node was a task of a job its client then cancelled: the
    node's other held results waited for that check's answer, which never came, so their
    jobs stayed running for ever with every task done (a task shown queued, no reason
    given). Now they wait for another check of their node."""
    app, a, b = trusted_pair(tmp_path)
    checked, other, _ = held_twice(app, a, b)
    alice = app.store.get_account_by_name("alice")
    assert alice is not None
    app.jobs.cancel(alice, checked)
    drain(app, a, b)
    job = app.store.get_job(other)
    assert job is not None and job.state == JobState.SUCCEEDED
    assert app.store.task_counts(other)[TaskState.SUCCEEDED] == job.task_count
    assert app.ledger.check().balanced


def test_a_held_result_of_a_cancelled_job_is_never_picked_as_a_check(tmp_path: Path) -> None:
    """A held result of a job cancelled since could be picked as its node's check: it was
    sent nowhere, and the node's other held results waited for it for ever."""
    app, a, b = trusted_pair(tmp_path)
    first = submit(app, 2)
    assert run(a, credit=1) == 1  # held; the job has more to run: no check picked yet
    alice = app.store.get_account_by_name("alice")
    assert alice is not None
    app.jobs.cancel(alice, first)
    second = submit(app, 2)
    assert run(a, credit=1) == 1  # held likewise
    app.clock.advance(31)
    app._reap()  # overdue: a check of a is picked, the oldest held result (Fixed)
    drain(app, a, b)
    job = app.store.get_job(second)
    assert job is not None and job.state == JobState.SUCCEEDED
    assert app.ledger.check().balanced


def test_a_check_accepted_unchecked_vouches_for_the_results_it_was_picked_for(
    tmp_path: Path,
) -> None:
    """The checkers left, so the picked check was accepted unchecked (settle_stranded):
    the node's other held results waited for that check's answer for ever. Now they are
    accepted unchecked with it, as when a check finds nobody to run it."""
    app, a, b = trusted_pair(tmp_path)
    checked, other, _ = held_twice(app, a, b)
    app.scheduler.disconnect(b.id, b.sink)
    app.clock.advance(11)
    app._reap()  # the check is accepted unchecked; b's lease ran out
    assert run(a, credit=1) == 1  # no checker online: accepted as it comes
    for job_id in (checked, other):
        job = app.store.get_job(job_id)
        assert job is not None and job.state == JobState.SUCCEEDED, job_id
    assert credit_of(app, a) == 3 and app.ledger.check().balanced


def test_a_check_that_finds_no_agreement_throws_away_what_it_was_picked_for(
    tmp_path: Path,
) -> None:
    """The picked check ended with no agreement (the task failed: NO_AGREEMENT): the
    node's other held results waited for that check's answer for ever, their job running
    with every task done. Now they are thrown away and run again elsewhere, as after any
    check that does not confirm their node."""
    app, a, b = trusted_pair(tmp_path)
    c = FakeNode(app, "c", owner="o3")
    c.connect(credit=0)
    checked, other, kept = held_twice(app, a, b, max_attempts=1)  # 3 results that disagree: failed
    assert run(b, b"wrong", credit=1) == 1
    assert run(c, b"junk", credit=1) == 1
    job = app.store.get_job(checked)
    assert job is not None and job.state == JobState.FAILED and "NO_AGREEMENT" in job.error
    assert all(v.accepted for v in b.answer(kept))
    drain(app, b, c)
    job = app.store.get_job(other)
    assert job is not None and job.state == JobState.SUCCEEDED
    [rerun] = app.store.get_tasks([f"{other}-0"])
    assert rerun.node_id in (b.id, c.id)
    assert app.ledger.check().balanced
