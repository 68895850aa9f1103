"""Gathers finished tasks into signed batches: results that finish within a short window
(or up to `max_items` of them) become one Results message under one signature."""

import asyncio
import logging
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

from sparegrid.v1 import common_pb2, worker_pb2
from sparegrid.wire import Signer
from sparegrid.wire.clock import Clock
from sparegrid.wire.receipt import decode_statement, sign_batch
from sparegrid.worker.upstream.messages import message_of
from sparegrid.worker.upstream.outbox import Outbox

_log = logging.getLogger("sparegrid.worker.upstream.batcher")
RETRY_SECONDS = 5.0  # a batch the outbox could not take is tried again this much later
# Inline bytes per Results message, well under the channel's 64 MiB message limit.
MAX_INLINE_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class _Result:
    statement: bytes
    inline: Mapping[str, bytes]  # digest -> bytes sent in the Results message
    blobs: Mapping[str, bytes]  # digest -> bytes uploaded before it is sent
    log: common_pb2.TaskLog | None = None  # kept when the job asked for it

    @property
    def inline_size(self) -> int:
        logged = len(self.log.text) if self.log is not None else 0
        return logged + sum(len(data) for data in self.inline.values())


class ResultBatcher:
    def __init__(
        self,
        signer: Signer,
        outbox: Outbox,
        clock: Clock,
        window: float,
        max_items: int,
        max_unacked: int = 4,
    ) -> None:
        self._max_unacked = max_unacked
        self._signer = signer
        self._outbox = outbox
        self._clock = clock
        self._window = window
        self._max = max_items
        self._results: list[_Result] = []
        self._inline_size = 0
        self._failures: list[worker_pb2.TaskFailure] = []
        self._lock = asyncio.Lock()
        self._timer: asyncio.Task[None] | None = None
        self._queued = False  # a flush is on its way to the lock: it takes everything
        self._flushes: set[asyncio.Task[None]] = set()
        self._retry: asyncio.Task[None] | None = None
        # told when the outbox could not be written (a full disk): the batch is kept
        self.write_failed: Callable[[OSError], object] = lambda exc: None

    def add_result(
        self,
        statement: bytes,
        inline: Mapping[str, bytes],
        blobs: Mapping[str, bytes],
        log: common_pb2.TaskLog | None = None,
    ) -> None:
        result = _Result(statement, inline, blobs, log)
        self._results.append(result)
        self._inline_size += result.inline_size
        self._schedule()

    def add_failure(self, failure: worker_pb2.TaskFailure) -> None:
        self._failures.append(failure)
        self._schedule()

    def __len__(self) -> int:
        return len(self._results) + len(self._failures)

    def attempt_ids(self) -> list[str]:
        """Attempts whose outcome waits here, not yet in the outbox: still held."""
        ids = [decode_statement(r.statement).attempt_id for r in self._results]
        return ids + [f.attempt_id for f in self._failures]

    def _full(self) -> bool:
        full = len(self._results) >= self._max or self._inline_size >= MAX_INLINE_BYTES
        return full or len(self._failures) >= self._max

    def _schedule(self) -> None:
        if self._retry is not None:  # the outbox could not be written: tried again then
            return
        if self._full():
            if not self._queued:  # not one flush task per result while the batch is full
                self._queued = True
                self._spawn(self.flush(force=False))
        elif self._timer is None:
            self._timer = self._spawn(self._flush_later())

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(coro)
        self._flushes.add(task)
        task.add_done_callback(self._flushes.discard)
        return task

    async def _flush_later(self) -> None:
        await self._clock.sleep(self._window)
        self._timer = None
        await self.flush(force=False)

    async def flush(self, force: bool = True) -> None:
        """Signs what is gathered and puts it in the outbox (durably) in batch-id order.

        Unless forced, a batch that is not full waits while `max_unacked` batches are
        still unacknowledged: when the coordinator falls behind, results gather into
        fewer, larger batches (one signature, one fsync and one commit each) instead of a
        growing queue of small ones.

        The wait for acknowledgements is made without the lock: a forced flush (what a
        worker does when its session is lost, before it reconnects) must not queue behind
        a flush waiting for acks that only a new session can bring.
        """
        while True:
            async with self._lock:
                self._queued = False
                while self._results or self._failures:
                    if not force and len(self._outbox) >= self._max_unacked and not self._full():
                        break
                    results = self._take_results()
                    failures = self._take_failures()
                    if not await self._put(results, failures):
                        return
                else:
                    return
                changed = self._outbox.change_event()
            await changed.wait()

    def _take_results(self) -> list[_Result]:
        """The next batch: at most `max_items` results and MAX_INLINE_BYTES inline (or one)."""
        count, size = 0, 0
        for result in self._results[: self._max]:
            if count and size + result.inline_size > MAX_INLINE_BYTES:
                break
            count, size = count + 1, size + result.inline_size
        taken, self._results = self._results[:count], self._results[count:]
        self._inline_size -= size
        return taken

    def _take_failures(self) -> list[worker_pb2.TaskFailure]:
        """At most `max_items` failures, their logs MAX_INLINE_BYTES in all (or one)."""
        count, size = 0, 0
        for failure in self._failures[: self._max]:
            if count and size + len(failure.log.text) > MAX_INLINE_BYTES:
                break
            count, size = count + 1, size + len(failure.log.text)
        taken, self._failures = self._failures[:count], self._failures[count:]
        return taken

    async def _put(self, results: list[_Result], failures: list[worker_pb2.TaskFailure]) -> bool:
        """Writes a batch of each to the outbox; False when one could not be written (a
        full disk): what was not written is kept, first in line, and tried again later."""
        try:
            if results:
                blobs = {d: b for r in results for d, b in r.blobs.items()}
                await self._outbox.put(self._signed(results), blobs)
                results = []
            if failures:
                body = worker_pb2.Failures(batch_id=self._outbox.next_batch_id(), failures=failures)
                await self._outbox.put(message_of(body), {})
        except OSError as exc:
            self._keep(results, failures, exc)
            return False
        return True

    def _signed(self, results: list[_Result]) -> worker_pb2.WorkerMessage:
        statements = [r.statement for r in results]
        body = worker_pb2.Results(
            batch_id=self._outbox.next_batch_id(),
            statements=statements,
            signature=sign_batch(self._signer, statements),
            inline_outputs={d: b for r in results for d, b in r.inline.items()},
            logs=[r.log for r in results if r.log is not None],
        )
        return message_of(body)

    def _keep(
        self, results: list[_Result], failures: list[worker_pb2.TaskFailure], exc: OSError
    ) -> None:
        """A batch the outbox could not take goes back to the front of the line, and the
        line is flushed again after RETRY_SECONDS: its tasks' outcomes are not lost to a
        disk that filled for a while (they stay held: see attempt_ids)."""
        self._results[:0] = results
        self._inline_size += sum(r.inline_size for r in results)
        self._failures[:0] = failures
        _log.error(
            "could not write %d outcome(s) to the outbox (%s); trying again in %.0fs",
            len(results) + len(failures),
            exc,
            RETRY_SECONDS,
        )
        self.write_failed(exc)
        if self._retry is None:
            self._retry = self._spawn(self._flush_again())

    async def _flush_again(self) -> None:
        await self._clock.sleep(RETRY_SECONDS)
        self._retry = None
        await self.flush(force=False)

    async def close(self) -> None:
        """Flushes what is left; a pending timer is cancelled."""
        for waiting in (self._timer, self._retry):
            if waiting is not None:
                waiting.cancel()
        self._timer = self._retry = None
        await asyncio.gather(*self._flushes, return_exceptions=True)
        await self.flush()
        if self:
            _log.error("%d outcome(s) could not be written to the outbox: lost", len(self))
