"""A stateful model of scheduling, verification and settlement: random sequences of what
clients, workers, the reaper and the operator do, on the in-memory store with a fake
clock, with the coordinator's invariants checked after every step and its liveness at the
end (every job ends once nodes keep working honestly).

The fleet: honest nodes of three owners (two nodes of one of them), a node of a fourth
owner that may lie, and a node without an owner account that may lie. Each example draws
the trust settings (never checked, trusted soon, always checked), the canary rate and the
seeds of every random choice the coordinator makes, so that it can be replayed and shrunk.

It drives the app as the RPC layer does: every step is a call in a group commit
(`App.call`), a worker's message followed by a dispatch pass in the same commit, so that
on a SQL store the group commit's own paths run (one transaction for the group, a
savepoint per call, PostgreSQL's pipelined writes and its lease of queued tasks that reads
nothing back). A failed group commit closes every session and reloads memory: on any
store it fails the model, as does memory that parts from the store.

`SPAREGRID_MODEL_EXAMPLES=5000 .venv/bin/python -m pytest -q tests/coordinator/
test_settlement_model.py` runs it longer (the per-test timeout is lifted then);
`SPAREGRID_MODEL_STORE=sqlite` or `postgres` (with SPAREGRID_TEST_POSTGRES set) runs it on
that store, each example on a fresh database.
"""

import asyncio
import functools
import os
import random
import shutil
import tempfile
import uuid
from collections import Counter
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from sparegrid.coordinator.app import App
from sparegrid.coordinator.clock import FakeClock
from sparegrid.coordinator.domain import (
    Account,
    Job,
    Task,
    client_account,
)
from sparegrid.coordinator.errors import CoordinatorError
from sparegrid.coordinator.services.canaries import CANARY_ACCOUNT, CanaryConfig
from sparegrid.coordinator.services.jobs import JobSpec
from sparegrid.coordinator.services.ledger import Payment
from sparegrid.coordinator.services.reputation import TrustConfig
from sparegrid.coordinator.services.results import PREEMPTED, Failure, Verdict
from sparegrid.coordinator.services.scheduler import ActiveJob
from sparegrid.coordinator.settings import Settings
from sparegrid.coordinator.states import FINAL_JOB_STATES
from sparegrid.coordinator.store.base import Posted, Store
from sparegrid.coordinator.store.memory import MemoryStore
from sparegrid.wire import Signer
from tests.coordinator.commits import Commits
from tests.coordinator.conftest import drop_schema, open_backend, store_kinds
from tests.coordinator.helpers import FakeNode, FakeSink
from tests.coordinator.model_parts import (
    Worker,
    check_clients,
    check_job,
    check_payments,
    describe,
)

EXAMPLES = int(os.environ.get("SPAREGRID_MODEL_EXAMPLES", "0"))
STORE = os.environ.get("SPAREGRID_MODEL_STORE", "memory")  # memory, sqlite or postgres
RIGHT = b"ok"
CLIENTS = ("alice", "bob")
GRANTED = 10**6  # each client's credit
# (name, owner, honest): "" is a node without an owner account
FLEET = (
    ("h1", "o1", True),
    ("h2", "o2", True),
    ("h3", "o3", True),
    ("h1b", "o1", True),
    ("liar", "o4", False),
    ("anon", "", False),
)
HONEST_OWNERS = 3
DRAIN_ROUNDS = 80  # rounds of the final drain, each 31 s of the fake clock
WAIT_LIMIT = 600.0  # a job none of whose tasks can run fails after this long
# what a result for a task the node holds may be refused with: the task or attempt ended
ENDED = {"STALE", "TASK_DONE"}


class SettlementModel(RuleBasedStateMachine):
    def __init__(self, store: str = STORE) -> None:
        super().__init__()
        if store not in ("memory", "sqlite", "postgres"):
            raise ValueError(f"SPAREGRID_MODEL_STORE is memory, sqlite or postgres, not {store!r}")
        self.tmp = Path(tempfile.mkdtemp(prefix="sparegrid-model-"))
        self.kind = store
        self.schema = f"t_{uuid.uuid4().hex}"  # PostgreSQL's: this example's own
        self.commits = Commits()
        self._call, self._run = self.commits.call, self.commits.run
        self.app: App | None = None
        self.workers: list[Worker] = []
        self.accounts: dict[str, Account] = {}
        self.jobs: list[tuple[str, str]] = []  # (client, job id)
        self.accepted: Counter[str] = Counter()  # task id -> times accepted
        self.paid: list[Payment] = []  # every payment booked
        self.retries: list[asyncio.Task[Job]] = []  # retries not ended yet

    # --- setting up ----------------------------------------------------------------------

    @initialize(
        trust=st.sampled_from(
            [
                TrustConfig(warmup=0, floor=0.0),  # never checked
                TrustConfig(warmup=2, floor=0.05),  # trusted soon, held results
                TrustConfig(warmup=2, floor=0.5),
                TrustConfig(warmup=10**9),  # always checked
            ]
        ),
        canary_rate=st.sampled_from([0.0, 0.5, 1.0]),
        seed=st.integers(0, 2**32 - 1),
        trusted=st.sets(st.integers(0, len(FLEET) - 1)),
        bulk_above=st.sampled_from([2000, 1]),
    )
    def setup(
        self, trust: TrustConfig, canary_rate: float, seed: int, trusted: set[int], bulk_above: int
    ) -> None:
        """`bulk_above` 1: a job of more tasks is written, retried and swept as a large one
        is, a slice per group commit."""
        settings = Settings(
            data_dir=self.tmp,
            trust=trust,
            canaries=CanaryConfig(rate=canary_rate),
            wait_limit_seconds=WAIT_LIMIT,
            bulk_above=bulk_above,
        )
        self.seed = seed
        self._open(App(self._store(), settings, clock=FakeClock()))
        app = self.app
        assert app is not None
        create = app.accounts.create
        for name in CLIENTS:
            self.accounts[name], _ = self._call(functools.partial(create, name, GRANTED))
        for i, (name, owner, honest) in enumerate(FLEET):
            signer = Signer(Ed25519PrivateKey.from_private_bytes(bytes([i + 1]) * 32))
            node = functools.partial(FakeNode, app, name, owner=owner, signer=signer)
            self.workers.append(Worker(self._call(node), honest))
        for n in sorted(trusted):  # a record that lets results be held from the start
            self._call(functools.partial(app.reputations.validated, [self.workers[n].id] * 1000))
        for w in self.workers:
            self._connect(w, credit=2, running=[])
        self._after()

    def _store(self) -> Store:
        """This example's store; a SQL one opened afresh over the same database (a restart)."""
        if self.kind == "memory":
            return MemoryStore()
        if self.kind == "postgres" and not os.environ.get("SPAREGRID_TEST_POSTGRES"):
            pytest.fail("SPAREGRID_MODEL_STORE=postgres needs SPAREGRID_TEST_POSTGRES set")
        return open_backend(self.kind, self.tmp, self.schema)

    def _open(self, app: App) -> None:
        """Starts the services of an app (new, or restarted over the same store), its
        random choices seeded, its payments, acceptances and failed commits recorded."""
        app.start_services()
        rng = random.Random(self.seed)
        app.reputations._rng = random.Random(rng.random())
        app.intake.settlement.vouching.rng = random.Random(rng.random())
        app.canaries.rng = random.Random(rng.random())
        app.spot_checks.rng = random.Random(rng.random())
        pay = app.ledger.pay

        def paying(payments: list[Payment]) -> Posted:
            booked = pay(payments)
            self.paid += [p for p, new in zip(payments, booked.new, strict=True) if new]
            return booked

        app.ledger.pay = paying  # type: ignore[method-assign]
        settlement = app.intake.settlement
        accept = settlement._accept

        def accepting(active: ActiveJob, task: Task, *args: object) -> None:
            self.accepted[task.id] += 1
            accept(active, task, *args)  # type: ignore[arg-type]

        settlement._accept = accepting  # type: ignore[method-assign]
        self.commits.attach(app)
        self.app = app
        for w in self.workers:
            w.fake.app = app

    @property
    def a(self) -> App:
        assert self.app is not None
        return self.app

    def _connect(self, w: Worker, credit: int, running: list[str]) -> None:
        """A worker's session starts, and it grants its credit (with none, it still takes
        work: a worker whose credit is spent)."""
        app, fake = self.a, w.fake
        sink = FakeSink()
        fake.sink = sink
        w.sinks.append(sink)

        def attach() -> tuple[list[str], list[str]]:
            fake.node.last_seen = app.clock.now()  # as a Hello records it
            app.store.upsert_node(fake.node)
            return app.scheduler.connect(fake.node, sink, running)

        def grant() -> None:
            if credit:
                app.scheduler.grant(w.id, 0, credit)
            else:
                app.scheduler.sessions[w.id].granted.add(0)

        _, cancelled = self._call(attach)
        self._call(grant, kick=True)
        for attempt_id in cancelled:
            w.held.pop(attempt_id, None)

    def _after(self) -> None:
        """What follows every step: a dispatch pass (as the reaper's kick asks for one),
        the workers take their assignments and cancels, and a session the coordinator
        closed (a node quarantined) ends as its stream would."""
        app = self.a
        self._retried()
        if not self.commits.dispatched:  # none since the last commit: nothing new to lease
            self._call(lambda: None, kick=True)
        for w in self.workers:
            for sink in w.sinks:
                for item in sink.take():
                    w.held[item[0].id] = item
                w.cancelled.update(sink.cancelled)
                sink.cancelled.clear()
            session = app.scheduler.sessions.get(w.id)
            if session is not None and session.sink.closed:  # type: ignore[attr-defined]
                self._call(functools.partial(app.scheduler.disconnect, w.id, session.sink))
            w.sinks = [s for s in w.sinks if not s.closed or s is w.fake.sink]

    def _retried(self) -> None:
        """Retries that ended: retried, or refused for a reason a client may be given."""
        for retry in [r for r in self.retries if r.done()]:
            self.retries.remove(retry)
            error = None if retry.cancelled() else retry.exception()
            if error is not None:
                assert isinstance(error, CoordinatorError), error
                assert error.code in ("JOB_NOT_RETRYABLE", "NOTHING_TO_RETRY"), error

    def _reinstate(self, w: Worker) -> bool:
        """The operator reinstates the node if it is quarantined or banned."""
        app = self.a
        if not app.reputations.blocked(w.id):
            return False
        self._call(lambda: app.reputations.reinstate(w.id, "the model's drain"), kick=True)
        return True

    def _connected(self, w: Worker) -> bool:
        return w.id in self.a.scheduler.sessions

    # --- clients ---------------------------------------------------------------------------

    @rule(
        client=st.sampled_from(CLIENTS),
        tasks=st.integers(1, 4),
        policy=st.sampled_from([(0, 0), (0, 0), (2, 2), (3, 2)]),
        max_attempts=st.sampled_from([0, 1, 2]),
    )
    def submit(self, client: str, tasks: int, policy: tuple[int, int], max_attempts: int) -> None:
        params = f'{{"tasks": {tasks}, "data": "hi"}}'.encode()
        replicas, quorum = policy
        spec = JobSpec(
            kind="echo", params=params, replicas=replicas, quorum=quorum, max_attempts=max_attempts
        )
        job = self._run(self.a.submit(self.accounts[client], spec))
        self.jobs.append((client, job.id))
        self._after()

    @rule(pick=st.integers(0, 100))
    def cancel(self, pick: int) -> None:
        if self.jobs:
            client, job_id = self.jobs[pick % len(self.jobs)]
            self._call(lambda: self.a.jobs.cancel(self.accounts[client], job_id))
        self._after()

    @rule(pick=st.integers(0, 100), wait=st.booleans())
    def retry(self, pick: int, wait: bool) -> None:
        """A client retries a job; a large one's retry goes on, a slice per group commit,
        between the steps that follow unless `wait`."""
        if self.jobs:
            client, job_id = self.jobs[pick % len(self.jobs)]
            retry = self.a.submitter.retry(self.accounts[client], job_id)
            self.retries.append(self.commits.loop.create_task(retry))
            if wait:
                self._run(asyncio.wait(self.retries))
        self._after()

    # --- workers ---------------------------------------------------------------------------

    @rule(n=st.integers(0, len(FLEET) - 1), credit=st.integers(0, 4), keep=st.booleans())
    def connect(self, n: int, credit: int, keep: bool) -> None:
        """Connects, or reconnects: with what the worker holds, or restarted without it."""
        w = self.workers[n]
        if not keep:
            w.held.clear()
        self._connect(w, credit, list(w.held))
        self._after()

    @rule(n=st.integers(0, len(FLEET) - 1))
    def disconnect(self, n: int) -> None:
        w = self.workers[n]
        self._call(lambda: self.a.scheduler.disconnect(w.id, w.fake.sink))
        self._after()

    @rule(n=st.integers(0, len(FLEET) - 1), credit=st.integers(1, 4))
    def grant(self, n: int, credit: int) -> None:
        w = self.workers[n]
        if self._connected(w):
            self._call(lambda: self.a.scheduler.grant(w.id, 0, credit), kick=True)
        self._after()

    @rule(
        n=st.integers(0, len(FLEET) - 1),
        count=st.integers(1, 3),
        lie=st.booleans(),
        wrong=st.sampled_from([b"wrong", b"junk"]),
    )
    def answer(self, n: int, count: int, lie: bool, wrong: bytes) -> None:
        """Returns results for what the node holds (late ones too: a lease that ran out
        stays with the worker until it answers); a lying node may return a wrong one."""
        w = self.workers[n]
        items = list(w.held.values())[:count]
        if items:
            output = wrong if lie and not w.honest else RIGHT
            self._expect(self._call(lambda: w.fake.answer(items, output), kick=True))
            for item in items:
                del w.held[item[0].id]
                w.sent.append((item, output))
        self._after()

    @rule(n=st.integers(0, len(FLEET) - 1), lie=st.booleans(), late=st.booleans())
    def work(self, n: int, lie: bool, late: bool) -> None:
        """A node takes what it may and answers all it holds, after its leases ran out
        when `late` (their tasks already given to others, or queued again)."""
        w = self.workers[n]
        if self._connected(w):
            self._call(lambda: self.a.scheduler.grant(w.id, 0, 2), kick=True)
            self._after()
        if late:
            self.a.clock.advance(self.a.settings.lease_seconds + 1)  # type: ignore[attr-defined]
            self._call(self.a.scheduler.reap)
            self._after()
        if w.held:
            items = list(w.held.values())
            output = b"wrong" if lie and not w.honest else RIGHT
            self._expect(self._call(lambda: w.fake.answer(items, output), kick=True))
            w.held.clear()
            w.sent += [(item, output) for item in items]
        self._after()

    @rule(n=st.integers(0, len(FLEET) - 1), pick=st.integers(0, 100))
    def resend(self, n: int, pick: int) -> None:
        """A batch sent again (its ack was lost): accepted once, never paid twice."""
        w = self.workers[n]
        if w.sent:
            item, output = w.sent[pick % len(w.sent)]
            self._expect(self._call(lambda: w.fake.answer([item], output), kick=True))
        self._after()

    @rule(
        n=st.integers(0, len(FLEET) - 1),
        code=st.sampled_from(["ERR", PREEMPTED, "OUT_OF_MEMORY", "TIMEOUT"]),
        retryable=st.booleans(),
    )
    def fail(self, n: int, code: str, retryable: bool) -> None:
        w = self.workers[n]
        if w.held:
            attempt_id = next(iter(w.held))
            del w.held[attempt_id]
            failure = Failure(attempt_id, code, "model", retryable)
            [verdict] = self._call(lambda: self.a.intake.failures(w.id, [failure]), kick=True)
            assert verdict.accepted, verdict
        self._after()

    @rule(n=st.integers(0, len(FLEET) - 1))
    def obey_cancels(self, n: int) -> None:
        w = self.workers[n]
        for attempt_id in w.cancelled:
            w.held.pop(attempt_id, None)
        w.cancelled.clear()
        self._after()

    @rule(n=st.integers(0, len(FLEET) - 1))
    def heartbeat(self, n: int) -> None:
        self._call(lambda: self.a.scheduler.heartbeat(self.workers[n].id))
        self._after()

    @rule(n=st.integers(0, len(FLEET) - 1), results=st.sampled_from([3, 25, 1000]))
    def earn_trust(self, n: int, results: int) -> None:
        """The node's record: results other owners confirmed (its check rate falls)."""
        self._call(lambda: self.a.reputations.validated([self.workers[n].id] * results))
        self._after()

    # --- the coordinator's own loops -------------------------------------------------------

    @rule(seconds=st.sampled_from([1.0, 5.0, 11.0, 31.0, 61.0]))
    def advance(self, seconds: float) -> None:
        """Time passes and the reaper runs: leases expire, held results are picked for a
        check, stranded ones settled."""
        self.a.clock.advance(seconds)  # type: ignore[attr-defined]
        self._call(self.a._reap)
        self._after()

    @rule()
    def check_idle(self) -> None:
        settlement = self.a.intake.settlement

        def check() -> None:
            settlement.pick_overdue()
            settlement.check_idle(list(self.a.scheduler.jobs))

        self._call(check)
        self._after()

    @rule(limit=st.integers(1, 3))
    def sweep(self, limit: int) -> None:
        """A step of the sweep that cancels an ended large job's queued tasks in the store
        (App._cancel_sweeps runs them after the commit that asked for one)."""
        sched = self.a.scheduler
        if sched.sweeps:
            self._call(functools.partial(sched.sweep, limit))
        self._after()

    @rule()
    def restart(self) -> None:
        """The coordinator restarts over the same store: every session ends, and each
        worker reconnects with what it still holds."""
        old = self.a
        self._run(old.submitter.stop())  # retries in progress end with it
        for retry in self.retries:
            retry.cancel()
        if self.retries:
            self._run(asyncio.wait(self.retries))
        self._retried()
        store = old.store
        if self.kind != "memory":  # what memory holds is read back from the database
            store.close()
            store = self._store()
        self._open(App(store, old.settings, clock=old.clock))
        for w in self.workers:
            w.sinks = []
            self._connect(w, credit=1, running=list(w.held))
        self._after()

    # --- what must hold --------------------------------------------------------------------

    def _expect(self, verdicts: list[Verdict]) -> None:
        """A result for an attempt the node was given is accepted, or refused because the
        attempt or its task ended; nothing an honest worker sends is anything else."""
        for v in verdicts:
            assert v.accepted or v.code in ENDED, v

    @invariant()
    def consistent(self) -> None:
        if self.app is None:
            return
        self.check()

    def check(self) -> None:
        self.commits.check()
        app = self.a
        store, sched = app.store, app.scheduler
        stored = {r.node_id: r for r in store.get_reputations()}
        assert app.reputations.all() == stored, "reputations in memory are not the store's"
        report = app.ledger.check()
        assert report.balanced, report.problems
        twice = [t for t, n in self.accepted.items() if n > 1]
        assert not twice, f"tasks accepted twice: {twice}"
        for w in self.workers:
            if w.honest:
                rep = app.reputations.get(w.id)
                assert rep.invalid == 0, f"honest node {w.fake.node.name} struck: {rep.reason}"
        running = {a.id: a for a in store.running_attempts()}
        for job in store.list_jobs(limit=10**6):
            check_job(app, job.id, running)
        for attempt in running.values():
            active = sched.jobs.get(attempt.job_id)
            assert active is not None, f"attempt {attempt.id} runs for ended job {attempt.job_id}"
            mine = active.running.get(attempt.task_id)
            assert mine is not None and mine.id == attempt.id, (
                f"running attempt {attempt.id} of task {attempt.task_id} not in memory"
            )
        leases = [lease for s in sched.sessions.values() for lease in s.leases.values()]
        leased = {t.id: t for t in store.get_tasks([lease.task.id for lease in leases])}
        for lease in leases:
            assert lease.attempt.id in running, f"lease {lease.attempt.id} not running in the store"
            active = sched.jobs.get(lease.task.job_id)
            assert active is not None and active.running.get(lease.task.id) is lease.attempt
            stored = leased[lease.task.id]
            assert lease.task.attempts == stored.attempts, (lease.task, stored)
        check_payments(store, self.paid)
        check_clients(store, self.accounts, GRANTED)

    # --- liveness --------------------------------------------------------------------------

    def teardown(self) -> None:
        try:
            if self.app is not None and not self.commits.failed:  # else the step's error says why
                self.drain()
                self.check()
        finally:
            self._close()

    def _close(self) -> None:
        """Closes this example's store (dropping its PostgreSQL schema) and event loop."""
        try:
            if self.app is not None:
                self.app.store.close()
            if self.kind == "postgres" and os.environ.get("SPAREGRID_TEST_POSTGRES"):
                drop_schema(self.schema)
        finally:
            self.commits.close()
            shutil.rmtree(self.tmp, ignore_errors=True)

    def drain(self) -> None:
        """From now on every node works honestly (the operator reinstated any it
        quarantined): every job must end within a bounded number of rounds."""
        app = self.a
        if self.retries:
            self._run(asyncio.wait(self.retries))
        for w in self.workers:
            self._reinstate(w)
            self._after()
            self._connect(w, credit=0, running=list(w.held))
            self._after()
        for _ in range(DRAIN_ROUNDS):
            if not app.scheduler.jobs:
                break
            for w in self.workers:
                if self._reinstate(w):  # struck again for a lie of before
                    self._after()
                if not self._connected(w):
                    self._connect(w, credit=0, running=list(w.held))
            grant = app.scheduler.grant  # every worker's messages in one group commit
            self.commits.call_all([functools.partial(grant, w.id, 0, 8) for w in self.workers])
            self._after()
            answering = []
            for w in self.workers:
                for attempt_id in w.cancelled:
                    w.held.pop(attempt_id, None)
                w.cancelled.clear()
                if w.held:
                    answering.append(functools.partial(w.fake.answer, list(w.held.values()), RIGHT))
                    w.held.clear()
            for verdicts in self.commits.call_all(answering, kick=True):
                self._expect(verdicts)
            self._after()
            app.clock.advance(31.0)  # type: ignore[attr-defined]
            self._call(app._reap)
            self._after()
        while app.scheduler.sweeps:
            self._call(functools.partial(app.scheduler.sweep, 100))
        left = [describe(app, a) for a in app.scheduler.jobs.values()]
        assert not left, "jobs still open after the drain:\n" + "\n".join(left)
        open_jobs = store_open = [
            j.id for j in app.store.list_jobs(limit=10**6) if j.state not in FINAL_JOB_STATES
        ]
        assert not open_jobs, f"jobs not ended in the store: {store_open}"
        assert app.store.running_attempts() == []
        assert app.store.balance(client_account(CANARY_ACCOUNT)) >= 0


SettlementModel.TestCase.settings = settings(
    max_examples=EXAMPLES or 40,
    # the suite's run is the same 40 examples each time (a failure there is a regression);
    # a long run explores afresh, and keeps what it finds in .hypothesis/ to replay
    derandomize=not EXAMPLES,
    database=None if not EXAMPLES else settings.default.database,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    print_blob=True,
)
TestSettlementModel = pytest.mark.timeout(0 if EXAMPLES else 60)(SettlementModel.TestCase)


@pytest.mark.parametrize("store", store_kinds())
def test_memory_and_the_database_never_part(store: str) -> None:
    """A few examples on each SQL store (PostgreSQL's when SPAREGRID_TEST_POSTGRES is
    set): no group commit fails, and memory agrees with the database after every step.
    A failure is shown as found, unshrunk, within the per-test timeout:
    SPAREGRID_MODEL_STORE=STORE SPAREGRID_MODEL_EXAMPLES=N shrinks what a longer run finds."""
    run_state_machine_as_test(
        lambda: SettlementModel(store),
        settings=settings(
            SettlementModel.TestCase.settings,
            max_examples=10,
            derandomize=True,
            database=None,
            phases=[Phase.explicit, Phase.generate],
        ),
    )
