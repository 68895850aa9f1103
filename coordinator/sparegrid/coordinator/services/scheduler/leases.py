"""Taking leases back: expiry, stragglers, attempts lost with their node, given back by
its policy, or failed."""

from collections import deque

from sparegrid.coordinator.domain import (
    Attempt,
    AttemptState,
    Claim,
    Job,
    JobState,
    Task,
    TaskState,
    node_account,
    owner_of,
)
from sparegrid.coordinator.services.events import EventKind
from sparegrid.coordinator.services.ledger import Payment
from sparegrid.coordinator.services.scheduler.base import (
    NODE_LOST,
    OUT_OF_MEMORY,
    TASK_FAULTS,
    TIMEOUT,
    ActiveJob,
    log,
)
from sparegrid.coordinator.services.scheduler.dispatch import fits
from sparegrid.coordinator.services.scheduler.queues import QueuesPart
from sparegrid.coordinator.states import move_attempt, move_task


class LeasesPart(QueuesPart):
    """Takes leases back: expired, straggling, lost, given back or failed."""

    def reap(self) -> int:
        """Expires every lease past its deadline, and takes stragglers back; returns how
        many. A lease of a node that went away and did not come back within the reconnect
        grace was lost with it."""
        expired = self.store.expired_attempts(self.clock.now())
        gone = [a for a in expired if a.node_id not in self.sessions]
        self.lose(gone, reason="its node went away and did not come back in time")
        self.expire([a for a in expired if a.node_id in self.sessions], reason="lease expired")
        stragglers = self._stragglers()
        self._take_back(stragglers)
        now = self.clock.now()
        for node_id in [n for n, until in self.preempt_paused.items() if until <= now]:
            del self.preempt_paused[node_id]  # of nodes gone since: not kept for ever
        for owner in [o for o, until in self.full_owners.items() if until <= now]:
            del self.full_owners[owner]
        self.expired_total += len(expired) + len(stragglers)
        return len(expired) + len(stragglers)

    def clock_stepped(self, seconds: float) -> int:
        """The wall clock stepped by `seconds` (an NTP correction, a machine resumed from
        sleep): every running attempt's start and deadline, and the pauses kept until a
        time, move with it, so no lease runs out and no attempt straggles for time that
        did not pass, and a lease does not outlive its node by the step backwards either.
        Returns how many attempts moved."""
        attempts = {id(a): a for active in self.jobs.values() for a in active.running.values()}
        for session in self.sessions.values():
            attempts.update((id(lease.attempt), lease.attempt) for lease in session.leases.values())
        for attempt in attempts.values():
            attempt.created_at += seconds
            attempt.deadline += seconds
        for until in (self.preempt_paused, self.full_owners):
            for key in until:
                until[key] += seconds
        return self.store.shift_running(seconds)

    def took(self, active: ActiveJob, attempt: Attempt) -> None:
        """An attempt returned its result: how long it took is noted, and counts towards
        what a straggler is once the result is accepted (`validated`)."""
        session = self.sessions.get(attempt.node_id)
        device = session.device(attempt.device_index) if session is not None else None
        active.returned[attempt.node_id] += 1
        if device is not None:
            active.timings[attempt.id] = (device.kind, self.clock.now() - attempt.created_at)

    def validated(self, active: ActiveJob, accepted: list[str], refused: list[str]) -> None:
        """Results were accepted or refused: only the time an accepted one took counts
        towards what a straggler is. Made-up results come back at once, and fresh keys
        answering a job's first tasks so would make every honest node running a task
        over the floor a straggler, and keep it off the job."""
        for attempt_id in refused:
            active.timings.pop(attempt_id, None)
        for attempt_id in accepted:
            timing = active.timings.pop(attempt_id, None)
            if timing is not None:
                kind, seconds = timing
                active.durations.setdefault(kind, deque(maxlen=100)).append(seconds)

    def _take_back(self, stragglers: list[tuple[Attempt, str]]) -> None:
        """Stragglers lose their lease: their tasks go back to the front of the queue,
        never to that owner again. A task may just be heavy: that is not counted against
        its attempts, and a node that has returned results of the job may then take all
        the time it needs for it. It counts against the node as a lost lease does: its
        window halves, and two keep it off the job."""
        if not stragglers:
            return
        tasks = {t.id: t for t in self.store.get_tasks([a.task_id for a, _ in stragglers])}
        now = self.clock.now()
        for attempt, reason in stragglers:
            active, task = self.jobs[attempt.job_id], tasks[attempt.task_id]
            move_attempt(attempt, AttemptState.EXPIRED)
            attempt.finished_at, attempt.error_code, attempt.error = now, "STRAGGLER", reason
            active.straggled.add(task.id)
            session = self.sessions.get(attempt.node_id)
            owner = session.node.owner if session is not None else f"node:{attempt.node_id}"
            active.excluded.setdefault(task.id, set()).add(owner)
            attempt.claims |= Claim.KEPT_OFF
            self._release(attempt, cancel_reason=reason)
            self.shrink(attempt.node_id)
            active.node_failures[attempt.node_id] += 1
            task.attempts = max(task.attempts - 1, 0)
            move_task(task, TaskState.QUEUED)
            active.queue.appendleft(task)
        self.store.update_attempts([a for a, _ in stragglers])
        self.store.update_tasks(list(tasks.values()))
        log.info("%d straggling attempt(s) taken back", len(stragglers))

    def _stragglers(self) -> list[tuple[Attempt, str]]:
        """Runs every reaper pass over every running attempt: one younger than the floor
        is passed over before anything else is read, and each job's 90th percentile is
        sorted once per kind of device, not once per attempt (at 2 workers with tiny tasks
        that sorting was 2% of the coordinator's CPU; it grows with the tasks running)."""
        cfg, now = self.config, self.clock.now()
        young = now - cfg.straggler_floor_seconds
        found = []
        for active in self.jobs.values():
            p90s: dict[str, float] = {}
            for attempt in list(active.running.values()):
                if attempt.created_at >= young:
                    continue  # no limit is below the floor
                if attempt.task_id in active.straggled and active.returned[attempt.node_id]:
                    continue  # a heavy task, on a node that works on this job
                session = self.sessions.get(attempt.node_id)
                device = session.device(attempt.device_index) if session is not None else None
                taken = active.durations.get(device.kind, ()) if device is not None else ()
                if device is None or len(taken) < cfg.straggler_samples:
                    continue
                p90 = p90s.get(device.kind)
                if p90 is None:
                    p90 = p90s[device.kind] = sorted(taken)[int(0.9 * (len(taken) - 1))]
                lease = session.leases.get(attempt.id) if session is not None else None
                inputs = sum(r.size for r in lease.task.inputs) if lease is not None else 0
                floor = cfg.straggler_floor_seconds + inputs / cfg.straggler_download_rate
                limit = max(floor, cfg.straggler_factor * p90)
                if now - attempt.created_at > limit:
                    reason = (
                        f"ran {now - attempt.created_at:.0f}s, over {cfg.straggler_factor:g}x "
                        f"what 9 in 10 of the job's tasks took on a {device.kind} ({p90:.1f}s)"
                    )
                    found.append((attempt, reason))
        return found

    def lose(self, attempts: list[Attempt], reason: str) -> None:
        """Attempts lost with their node (a crash is not a failure): their tasks go back to
        the front of the queue with the attempt given back, and nothing counts against the
        node (no failure, no exclusion from the job) but its window, halved as for any
        lease that ran out. A task lost more times than its job's attempt limit counts as
        an expired lease from then on, so no task goes round for ever."""
        given: list[Attempt] = []
        counted: list[Attempt] = []
        for attempt in attempts:
            active = self.jobs.get(attempt.job_id)
            if active is not None and active.lost[attempt.task_id] >= active.job.max_attempts:
                counted.append(attempt)
                continue
            if active is not None:
                active.lost[attempt.task_id] += 1
            move_attempt(attempt, AttemptState.CANCELLED)
            attempt.finished_at = self.clock.now()
            attempt.error_code, attempt.error = NODE_LOST, reason
            given.append(attempt)
        for node_id in {a.node_id for a in given}:
            self.shrink(node_id)
        self.give_back(given)
        self.expire(counted, reason=f"{reason}, and the task was lost that way too often")

    def expire(self, attempts: list[Attempt], reason: str) -> None:
        for node_id in {a.node_id for a in attempts}:
            self.shrink(node_id)
        for attempt in attempts:
            move_attempt(attempt, AttemptState.EXPIRED)
            attempt.finished_at = self.clock.now()
            attempt.error_code, attempt.error = "LEASE_EXPIRED", reason
        self.settle_failures(attempts, retryable=True, tell_node=True)

    def _needs_more_memory(self, active: ActiveJob, task: Task, attempt: Attempt) -> bool:
        """Records that `task` needs a device with more memory than the one it ran out of;
        False (with the task's error set, and the need forgotten) when no connected node
        has such a device. Either is written with the attempt (Claim.OUT_OF_MEMORY; with
        FINAL when forgotten), for a restart to rebuild the need (QueuesPart._load_claims):
        else the task went back to the devices it had run out of memory on."""
        session = self.sessions.get(attempt.node_id)
        device = session.device(attempt.device_index) if session is not None else None
        if device is None or device.memory_bytes <= 0:
            return True
        attempt.claims |= Claim.OUT_OF_MEMORY
        need = max(active.needs_memory.get(task.id, 0), device.memory_bytes + 1)
        active.needs_memory[task.id] = need
        for other in self.sessions.values():
            if any(
                d.memory_bytes >= need and fits(active.job, other.node, d)
                for d in other.node.devices
            ):
                return True
        # that it needs more than any device holds is its node's word, as a failure called
        # final is (a node may claim any memory): the need is forgotten, and the claim
        # waits for a second owner (_second_opinion)
        del active.needs_memory[task.id]
        attempt.error += (
            f"; no connected device has more than {device.memory_bytes / 2**30:.1f} GiB"
        )
        return False

    def preempted(self, attempts: list[Attempt]) -> None:
        """Attempts their node's own policy stopped (owner back, too hot, window closed):
        given back at no cost to the node, which then gets no new task for
        `preempt_pause_seconds`, so that the tasks go to other nodes rather than back to
        it (a node handing back every task at once would otherwise hoard them); and no
        node of its owner gets that task again while another owner's node could run it
        (nodes of one owner each holding it until just short of a straggler, then handing
        it back, would otherwise hold it for ever, never counted against any)."""
        until = self.clock.now() + self.config.preempt_pause_seconds
        for attempt in attempts:
            self.preempt_paused[attempt.node_id] = until
            active = self.jobs.get(attempt.job_id)
            if active is not None and self._keep_off(
                active, attempt.task_id, self._owner(attempt.node_id)
            ):
                attempt.claims |= Claim.KEPT_OFF  # written with it (give_back)
        self.give_back(attempts)

    def turned_away(self, attempts: list[Attempt], full: set[str]) -> None:
        """Attempts whose result was refused for no fault of their task nor sign of a
        dishonest node: the node's owner is over its stored quota. Given back at no cost,
        as a preempted attempt is, and that owner (every node of it is as full) gets no
        task for `full_owner_pause_seconds`, then is tried again: its tasks go to other
        owners meanwhile, checks do not wait on it, and it takes work again once a sweep or
        the operator makes room, rather than staying off the job for good. `full`: the
        holders whose quotas the refusals named, the node's owner (owner_of) or, for a node
        without an owner account, the pool of all such nodes (ANONYMOUS_POOL): a fresh node
        key then cannot take a task only to have its result refused."""
        if not attempts:
            return
        until = self.clock.now() + self.config.full_owner_pause_seconds
        self.full_owners.update(dict.fromkeys(full, until))
        self.give_back(attempts)

    def give_back(self, attempts: list[Attempt]) -> None:
        """Attempts that were no fault of their node or task: a node's own policy stopped
        them (owner back, too hot, window closed), or they were lost with their node. Their
        tasks go back to the front of the queue with the attempt given back, and nothing
        counts against the node (no failure count, no exclusion from the job)."""
        if not attempts:
            return
        tasks = {t.id: t for t in self.store.get_tasks([a.task_id for a in attempts])}
        requeue: list[tuple[ActiveJob, Task]] = []
        with self.store.transaction():
            self.store.update_attempts(attempts)
            for attempt in attempts:
                active = self.jobs.get(attempt.job_id)
                task = tasks[attempt.task_id]
                self._release(attempt)
                if active is None or task.state != TaskState.LEASED:
                    continue
                task.attempts = max(task.attempts - 1, 0)
                move_task(task, TaskState.QUEUED)
                requeue.append((active, task))
            self.store.update_tasks(list(tasks.values()))
        for active, task in requeue:
            active.queue.appendleft(task)
        log.info("%d attempt(s) given back, %d task(s) re-queued", len(attempts), len(requeue))

    def settle_failures(
        self, attempts: list[Attempt], retryable: bool | list[bool], tell_node: bool = False
    ) -> None:
        """Records failed or expired attempts; re-queues their tasks or fails their jobs.
        What each counted for is written with it (Claim), for a restart to rebuild."""
        if not attempts:
            return
        flags = [retryable] * len(attempts) if isinstance(retryable, bool) else retryable
        tasks = {t.id: t for t in self.store.get_tasks([a.task_id for a in attempts])}
        requeue: list[tuple[ActiveJob, Task]] = []
        doomed: list[tuple[ActiveJob, str]] = []
        charges: list[Payment] = []
        with self.store.transaction():
            for attempt, again in zip(attempts, flags, strict=True):
                self.store.add_node_counts(attempt.node_id, 0, 1)
                active = self.jobs.get(attempt.job_id)
                task = tasks[attempt.task_id]
                self._release(attempt, cancel_reason=attempt.error if tell_node else "")
                if active is None or task.state != TaskState.LEASED:
                    continue  # the job ended, or another attempt finished the task
                active.node_failures[attempt.node_id] += 1
                owner = self._owner(attempt.node_id)
                if self._doubt(active, task, owner):
                    attempt.claims |= Claim.DOUBTED
                    self._failed_event(active, task, attempt, final=False)
                    requeue.append((active, task))
                    continue
                active.failed_by.setdefault(task.id, set()).add(owner)
                attempt.claims |= Claim.COUNTED
                if self._first_fault(active, task, attempt, owner):
                    active.faults.setdefault(task.id, {})[owner] = attempt
                    attempt.claims |= Claim.FAULT
                failures = task.attempts - active.results[task.id]
                if attempt.error_code == OUT_OF_MEMORY and again:
                    again = self._needs_more_memory(active, task, attempt)
                if not again:  # called final, or out of memory on the largest device
                    attempt.claims |= Claim.FINAL
                    again = self._second_opinion(active, task, owner)
                if again and failures >= active.job.max_attempts:
                    again = self._spent_by_one(active, task, attempt, owner)
                final = not again
                self._failed_event(active, task, attempt, final)
                if not final:
                    move_task(task, TaskState.QUEUED)
                    requeue.append((active, task))
                else:
                    move_task(task, TaskState.FAILED)
                    task.error = f"{attempt.error_code}: {attempt.error}"
                    active.open_tasks -= 1
                    active.failed += 1
                    doomed.append((active, f"task {task.index} failed: {task.error}"))
                    charges += self._charge(active, task)
            self.store.update_attempts(attempts)  # with what each counted for (Claim)
            self.store.update_tasks(list(tasks.values()))
            credited = self._pay_faults(charges)
        for node_id, total in credited.items():
            session = self.sessions.get(node_id)
            if session is not None:
                session.sink.credited(total)
        for active, task in requeue:
            active.queue.appendleft(task)
        for active, error in doomed:
            if active.job.id in self.jobs:
                self.finish(active, JobState.FAILED, error)
        log.info("%d attempt(s) failed or expired, %d re-queued", len(attempts), len(requeue))

    def _task_fault(self, attempt: Attempt) -> bool:
        """Whether a failure is the task's own (TASK_FAULTS). A TIMEOUT is only on a node
        that let the task run as long as the coordinator allows (--max-attempt-seconds):
        one that stops tasks sooner chose to."""
        if attempt.error_code not in TASK_FAULTS:
            return False
        if attempt.error_code != TIMEOUT:
            return True
        session = self.sessions.get(attempt.node_id)
        return session is not None and session.max_age >= self.full_age()

    def _first_fault(self, active: ActiveJob, task: Task, attempt: Attempt, owner: str) -> bool:
        """Whether a failure is the first of a vetted owner's for the task's own fault:
        the one `_charge` pays that owner for."""
        known = active.faults.get(task.id, {})
        return owner not in known and self.vetted(owner) and self._task_fault(attempt)

    def _charge(self, active: ActiveJob, task: Task) -> list[Payment]:
        """A task failed for good. When nodes of two vetted owners failed it for its own
        fault (TASK_FAULTS: it ran past their time limit, its executor raised on it, its
        input is bad), its client pays for the time they spent on it: each such owner's
        first failing attempt is paid the task's price times the share of the coordinator's
        time limit (--max-attempt-seconds) it ran, by this coordinator's clock, up to the
        results the escrow holds per task. A failure reported at once costs nothing, so
        failing tasks pays no better than running them; one owner's word alone pays
        nothing (a node failing everything would be paid for nothing), nor does a failure
        that is the node's (out of memory, preempted)."""
        faults = active.faults.pop(task.id, {})
        if len(faults) < 2:
            return []
        job = active.job
        codes = ", ".join(sorted({a.error_code for a in faults.values()}))
        why = f"failed task ({codes}): nodes of {len(faults)} owners agreed it was the task's fault"
        cost, limit = job.task_cost(task.work), self.config.max_attempt_seconds
        charges = []
        for attempt in list(faults.values())[: job.max_paid_results]:
            ran = (attempt.finished_at or self.clock.now()) - attempt.created_at
            amount = int(cost * min(max(ran, 0.0), limit) // limit)
            if amount > 0:
                charges.append(Payment(job, task.id, attempt.id, attempt.node_id, amount, why))
        return charges

    def _pay_faults(self, charges: list[Payment]) -> dict[str, int]:
        """Pays the failures `_charge` found, once each (keyed by attempt, as a result's
        payment is), in the caller's transaction; returns the paid nodes' totals."""
        if not charges:
            return {}
        booked = self.ledger.pay(charges)
        credited: dict[str, int] = {}
        jobs: dict[str, Job] = {}
        for payment, new in zip(charges, booked.new, strict=True):
            if new:
                payment.job.cost_spent += payment.amount
                jobs[payment.job.id] = payment.job
                credited[payment.node_id] = booked.balances[node_account(payment.node_id)]
        for job in jobs.values():
            self.store.update_job(job)
        log.info("%d failed attempt(s) paid by their jobs' clients", sum(booked.new))
        return credited

    def _doubt(self, active: ActiveJob, task: Task, owner: str) -> bool:
        """A failure is the node's claim, and a node key costs nothing: one of a node with
        no vetted owner is not counted while a node of a vetted owner that could run the
        job is online (else one fresh key could fail any job: a failure it calls final, or
        enough of them, used to end the task and with it the job). The task goes back to
        the front of the queue with the attempt given back, for vetted owners' nodes only
        (so no fresh key gets it again); the node counts the failure against the job as
        any other (two keep it off the job). True if so."""
        if self.vetted(owner) or not self.others_online(active, set()):
            return False
        task.attempts = max(task.attempts - 1, 0)
        active.doubted.add(task.id)
        move_task(task, TaskState.QUEUED)
        return True

    def _second_opinion(self, active: ActiveJob, task: Task, owner: str) -> bool:
        """A failure its node calls final (not retryable: the input is bad), or out of
        memory on a device no connected device outgrows (a node may claim any memory),
        ends the task, and with it the job, only once nodes of two owners said so, or when
        no node of another vetted owner could run it: one owner account's word would end
        any job it got a task of. Until then it counts as any failure (the task runs
        again). True if it is to run again."""
        said = active.final_claims.setdefault(task.id, set())
        said.add(owner)
        return len(said) < 2 and self.others_online(
            active, said | active.excluded.get(task.id, set())
        )

    def _spent_by_one(self, active: ActiveJob, task: Task, attempt: Attempt, owner: str) -> bool:
        """The task's attempts ran out. That ends it only once nodes of two owners failed
        it, or when no node of another vetted owner could run it: one owner account with
        many nodes would otherwise fail any job it got a task of, each node winning the task
        and failing it (or sitting on its lease) in turn. Until then its owner is kept off
        the task, which runs on for the others. True if it is to run again."""
        if len(active.failed_by.get(task.id, ())) >= 2:
            return False
        if not self._keep_off(active, task.id, owner):
            return False
        attempt.claims |= Claim.KEPT_OFF
        return True

    def _keep_off(self, active: ActiveJob, task_id: str, owner: str) -> bool:
        """Keeps an owner's nodes off a task while a node of another vetted owner could run
        it; True if so."""
        if not self.others_online(active, active.excluded.get(task_id, set()) | {owner}):
            return False
        active.excluded.setdefault(task_id, set()).add(owner)
        return True

    def _owner(self, node_id: str) -> str:
        """Who answers for a node: read from its session (no query) while it is connected."""
        session = self.sessions.get(node_id)
        node = session.node if session is not None else self.store.get_node(node_id)
        return owner_of(node) if node is not None else f"node:{node_id}"

    def _failed_event(self, active: ActiveJob, task: Task, attempt: Attempt, final: bool) -> None:
        if self.events is None:
            return
        then = "the task failed" if final else "the task is queued again"
        self.events.emit(
            EventKind.TASK_FAILED,
            f"task {task.index} of job {task.job_id} on node {attempt.node_id}: "
            f"{attempt.error_code}: {attempt.error} ({then})",
            job_id=task.job_id,
            task_id=task.id,
            node_id=attempt.node_id,
            account=active.owner,
            index=task.index,
            code=attempt.error_code,
            final=final,
        )
