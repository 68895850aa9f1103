"""The App's group commit: the calls of one turn of the event loop run in one transaction,
and what workers are told waits for it. A lost database pauses the coordinator here until
it is back."""

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from sparegrid.coordinator.clock import Clock
from sparegrid.coordinator.errors import CoordinatorError, ErrorKind, store_unavailable
from sparegrid.coordinator.services.canaries import Canaries
from sparegrid.coordinator.services.events import Events
from sparegrid.coordinator.services.identity import Identities
from sparegrid.coordinator.services.reputation import Reputations
from sparegrid.coordinator.services.scheduler import Scheduler
from sparegrid.coordinator.store.base import Store, StoreTaken, StoreUnavailable
from sparegrid.coordinator.submit import Submitter

if TYPE_CHECKING:
    from prometheus_client import Histogram

log = logging.getLogger("sparegrid.coordinator")

T = TypeVar("T")


CLOCK_STEP_SECONDS = 1.0  # wall time this far off monotonic time since the last look: a step


class WallSteps:
    """Steps of the wall clock (an NTP correction, a machine resumed from sleep, an
    operator's `date -s`): wall time that moved more or less than monotonic time by
    CLOCK_STEP_SECONDS or more since the last look. Leases are kept in wall time, so they
    must follow: a step forward expired every lease at once, each counted against its node
    and its task's attempts, and a step back let a silent node keep its tasks."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._mono, self._wall = clock.monotonic(), clock.now()

    def step(self) -> float:
        """The step since the last look, or 0."""
        mono, wall = self._clock.monotonic(), self._clock.now()
        step = (wall - self._wall) - (mono - self._mono)
        self._mono, self._wall = mono, wall
        return step if abs(step) >= CLOCK_STEP_SECONDS else 0.0


class CancelledCommit(Exception):
    """The commit's thread was stopped before it committed."""


class BufferedSink(Protocol):
    """A worker's outgoing messages, held until the group commit they belong to."""

    def flush(self) -> None: ...

    def discard(self) -> None: ...

    def close(self) -> None: ...


class CommitMetrics(Protocol):
    """The metrics a group commit observes (metrics.py)."""

    group_commit: "Histogram"
    dispatch: "Histogram"


class GroupCommit:
    """`App.call` and `App.kick`, and the database-loss pause and recovery; App holds the
    services and the state named here."""

    store: Store
    events: Events
    scheduler: Scheduler
    reputations: Reputations
    identities: Identities
    canaries: Canaries
    submitter: Submitter
    metrics: CommitMetrics
    sinks: set[BufferedSink]
    unflushed: set[BufferedSink]
    last_group_seconds: float
    serving: bool
    serving_changed: list[Callable[[bool], None]]
    taken_over: StoreTaken | None
    on_taken_over: Callable[[], None]
    _inbox: list[tuple[Callable[[], Any], "asyncio.Future[Any]"]]
    wall_steps: WallSteps
    _committer: Executor  # the one thread that commits
    _commit: "asyncio.Future[None] | None"  # the commit under way
    _group_scheduled: bool
    _kick_pending: bool
    _sweep_wanted: asyncio.Event
    _recovery: "asyncio.Task[None] | None"
    _lost: Exception
    _stopped: bool

    def call(self, fn: Callable[[], T]) -> "asyncio.Future[T]":
        """Runs `fn` in the next group commit; the future resolves once it is durable.

        Everything queued during one turn of the event loop runs in one transaction, each
        call in a savepoint of its own, followed by a dispatch pass if one was asked for.
        Messages to workers are held back until the commit, so no node hears of a lease,
        and no acknowledgement leaves, before it is on disk.
        """
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        if not self.serving:  # the database is lost: refused at once, retried by callers
            future.set_exception(store_unavailable(self._lost))
            future.exception()  # logged once, by _pause: not again by each unread future
            return future
        self._inbox.append((fn, future))
        self._schedule()
        return future

    def kick(self) -> None:
        """Asks for a dispatch pass in the next group commit."""
        if not self.serving:
            return
        self._kick_pending = True
        self._schedule()

    def _schedule(self) -> None:
        if not self._group_scheduled and self._commit is None:
            self._group_scheduled = True
            asyncio.get_running_loop().call_soon(self._commit_group)

    def _commit_group(self) -> None:
        """Runs the calls queued, then leaves the COMMIT to a thread of its own: while the
        disk syncs (or PostgreSQL answers), the loop reads the next results, and the next
        group starts once this one is durable."""
        began = time.perf_counter()
        self._group_scheduled = False
        items, self._inbox = self._inbox, []
        if self._stopped:  # shutting down: the store is closed, nothing more happens
            for _, future in items:
                if not future.done():
                    future.cancel()
            return
        done: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        self.events.deferred = True  # written once, with the group (services/events.py)
        try:
            with self.store.transaction(defer_commit=True):
                self._follow_wall_clock()
                for fn, future in items:
                    mark = self.events.mark()
                    try:
                        with self.store.transaction():
                            done.append((future, fn(), None))
                    except Exception as exc:
                        self.events.undo(mark)
                        done.append((future, None, exc))
                if self._kick_pending:
                    self._kick_pending = False
                    with self.metrics.dispatch.time():
                        self.scheduler.dispatch()
                self.events.flush()
        except Exception as exc:  # nothing in this group happened
            self._group_failed(exc, items)
            return
        finally:
            self.events.deferred = False
            self.last_group_seconds = time.perf_counter() - began
            self.metrics.group_commit.observe(self.last_group_seconds)
        commit = asyncio.get_running_loop().run_in_executor(
            self._committer, self.store.finish_commit
        )
        self._commit = commit
        commit.add_done_callback(lambda _: self._committed(commit, items, done))

    def _follow_wall_clock(self) -> None:
        """First in every group commit, so that no lease is judged or renewed across a step
        of the wall clock: running attempts keep the time they had left."""
        step = self.wall_steps.step()
        if step:
            moved = self.scheduler.clock_stepped(step)
            log.warning(
                "the wall clock stepped %+.1f s; %d running attempt(s) keep the time they had left",
                step,
                moved,
            )

    def _committed(
        self,
        commit: "asyncio.Future[None]",
        items: list[tuple[Callable[[], Any], "asyncio.Future[Any]"]],
        done: list[tuple["asyncio.Future[Any]", Any, BaseException | None]],
    ) -> None:
        """The group is durable (or failed): workers hear what it decided, callers their
        answers, and the next group may start."""
        self._commit = None
        error = None if commit.cancelled() else commit.exception()
        if commit.cancelled() or error is not None:
            self._group_failed(error or CancelledCommit("the commit was cancelled"), items)
        else:
            unflushed = list(self.unflushed)  # the sinks hold this set: cleared in place
            self.unflushed.clear()
            for sink in unflushed:  # only the workers this commit has messages for
                sink.flush()
            self.events.published()
            if self.scheduler.sweeps:
                self._sweep_wanted.set()
            for future, value, failure in done:
                if future.done():
                    continue
                if failure is None:
                    future.set_result(value)
                else:
                    future.set_exception(failure)
        if self._inbox or self._kick_pending:
            self._schedule()

    async def wait_committed(self) -> None:
        """Returns once no commit is under way (a stop closes the store after it)."""
        while self._commit is not None:
            await asyncio.wait([self._commit])
            await asyncio.sleep(0)  # its done callback runs first

    def _group_failed(
        self, exc: BaseException, items: list[tuple[Callable[[], Any], "asyncio.Future[Any]"]]
    ) -> None:
        if isinstance(exc, StoreUnavailable):  # an outage, logged by _pause: no traceback
            log.warning("group commit of %d call(s) failed: the database is lost", len(items))
        else:
            log.error("group commit of %d call(s) failed", len(items), exc_info=exc)
        self.events.discard()
        self._failed_commit(
            exc if isinstance(exc, Exception) else CancelledCommit(str(exc)),
            [future for _, future in items],
        )

    def _failed_commit(self, exc: Exception, futures: list["asyncio.Future[Any]"]) -> None:
        """Memory is ahead of what is durable: it is reloaded from the store, workers
        reconnect and grant their credit afresh, and every call of the group fails. A lost
        database (or a reload that fails) pauses the coordinator until it is back."""
        lost = isinstance(exc, StoreUnavailable)
        if not lost:
            try:
                self._reload()
            except Exception as again:  # the store fails its reads too
                log.exception("reloading from the store after a failed commit failed")
                lost, exc = True, again
        for sink in list(self.sinks):
            sink.discard()
            sink.close()
        self.unflushed.clear()
        if lost:
            self._pause(exc)
            failure = store_unavailable(exc)
        else:
            failure = CoordinatorError(
                ErrorKind.ABORTED, "STORE_UNAVAILABLE", f"the coordinator's store failed: {exc}"
            )
        for future in futures:
            if not future.done():
                future.set_exception(failure)
                future.exception()  # logged above: not again by each unread future

    def _reload(self) -> None:
        """Reloads what the services keep in memory from the store. A job a large retry is
        queuing again still looks ended in the store, with queued tasks: it is not to be
        swept, or the tasks the retry queued would be cancelled under it (the retry
        publishes them or sweeps them back itself)."""
        self.reputations.load()
        self.identities.load()
        self.scheduler.resync()
        for job_id in self.submitter.retrying():
            self.scheduler.sweeps.pop(job_id, None)
        self.canaries.load()

    def _pause(self, exc: Exception) -> None:
        """The database is lost: nothing more runs until `_recover` reconnects. Work held
        by workers stays with them (unacknowledged results in their outboxes, leases that
        they resume when they reconnect)."""
        self._lost = exc
        if not self.serving:
            return
        self.serving = False
        log.error(
            "lost the database: %s; calls are refused (UNAVAILABLE) and health says "
            "NOT_SERVING until it is back",
            exc,
        )
        self.scheduler.sessions.clear()  # their streams were closed: workers reconnect
        self._kick_pending = False
        for listener in self.serving_changed:
            listener(False)
        self._recovery = asyncio.get_running_loop().create_task(self._recover())

    async def _recover(self) -> None:
        """Reconnects with backoff, reloads, and serves again."""
        delay = 0.25
        while True:
            await asyncio.sleep(delay)
            try:
                self.store.reconnect()
                self._reload()
            except StoreTaken as exc:
                log.error("%s: it took over while this one was cut off; stopping", exc)
                self.taken_over = exc
                self.on_taken_over()
                return
            except Exception as exc:
                self._lost = exc
                log.warning("the database is still unavailable (%s); next try in %.1fs", exc, delay)
                delay = min(delay * 2, 5.0)
                continue
            break
        self.serving = True
        self._recovery = None
        log.warning("the database is back: serving again")
        for listener in self.serving_changed:
            listener(True)
        self.kick()
