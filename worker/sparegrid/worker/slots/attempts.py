"""The attempts a worker holds, from assignment to outcome, and one slot loop per device.

An attempt is fetched (its inputs downloaded into the cache), queued on its device, then
run in a batch by the device's runner. Whatever ends it (outcome, failure to fetch,
cancellation), `_finish` releases it exactly once: the report callback gets the outcome
unless it was cancelled, and `on_release` lets the daemon grant the device more credit.
"""

import asyncio
import functools
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from sparegrid.v1 import worker_pb2
from sparegrid.worker.errors import BlobRejected, BlobUnavailable, DigestMismatch
from sparegrid.worker.executors.base import (
    EXECUTOR_CRASHED,
    INPUT_DIGEST_MISMATCH,
    INPUT_UNAVAILABLE,
    UNKNOWN_DEVICE,
    UNKNOWN_KIND,
)
from sparegrid.worker.executors.registry import ExecutorRegistry
from sparegrid.worker.node.devices import DeviceInfo
from sparegrid.worker.slots.cache import BlobCache
from sparegrid.worker.slots.child.protocol import ChildTask, Outcome
from sparegrid.worker.slots.child.runner import DeviceRunner

_log = logging.getLogger("sparegrid.worker.slots.attempts")
MAX_BATCH = 64  # tasks sent to a child in one message

Fetch = Callable[[str, int], AsyncIterator[bytes]]
Report = Callable[[worker_pb2.Assignment, DeviceInfo | None, Outcome], None]
Phase = Literal["fetching", "queued", "running"]


@dataclass
class Slot:
    device: DeviceInfo
    runner: DeviceRunner
    ready: deque["Attempt"] = field(default_factory=deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    running: dict[int, "Attempt"] = field(default_factory=dict)
    held: int = 0


@dataclass(eq=False)
class Attempt:
    assignment: worker_pb2.Assignment
    serial: int
    slot: Slot
    phase: Phase = "fetching"
    inputs: dict[str, Path] = field(default_factory=dict)
    prepare: asyncio.Task[None] | None = None

    @property
    def attempt_id(self) -> str:
        return self.assignment.attempt_id


def failed(code: str, message: str, retryable: bool) -> Outcome:
    return Outcome(0, code=code, message=message, retryable=retryable)


class TaskManager:
    def __init__(
        self,
        slots: Sequence[Slot],
        registry: ExecutorRegistry,
        cache: BlobCache,
        fetch: Fetch,
        report: Report,
        on_release: Callable[[int], None],
    ) -> None:
        self.slots = {s.device.index: s for s in slots}
        self._registry = registry
        self._cache = cache
        self._fetch = fetch
        self._report = report
        self._on_release = on_release
        self._attempts: dict[str, Attempt] = {}
        self._serial = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._loops: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._loops = [asyncio.create_task(self._slot_loop(s)) for s in self.slots.values()]

    def held(self, device_index: int) -> int:
        slot = self.slots.get(device_index)
        return slot.held if slot else 0

    def attempt_ids(self) -> list[str]:
        return list(self._attempts)

    def needed_digests(self) -> set[str]:
        """Inputs of every held attempt: the cache must keep them."""
        return {r.digest for a in self._attempts.values() for r in a.assignment.inputs}

    def attempts_on(self, device_index: int) -> list[tuple[worker_pb2.Assignment, Phase]]:
        return [
            (a.assignment, a.phase)
            for a in self._attempts.values()
            if a.slot.device.index == device_index
        ]

    def phases(self) -> dict[str, Phase]:
        return {a.attempt_id: a.phase for a in self._attempts.values()}

    async def wait_idle(self) -> None:
        await self._idle.wait()

    def accept(self, assignment: worker_pb2.Assignment) -> None:
        if assignment.attempt_id in self._attempts:
            _log.warning("attempt %s assigned twice; ignoring the repeat", assignment.attempt_id)
            return
        slot = self.slots.get(assignment.device_index)
        if slot is None:
            message = f"this node has no device {assignment.device_index}"
            self._report(assignment, None, failed(UNKNOWN_DEVICE, message, True))
            return
        if self._registry.get(assignment.kind) is None:
            message = f"this node has no executor for job kind {assignment.kind!r}"
            self._report(assignment, slot.device, failed(UNKNOWN_KIND, message, True))
            self._on_release(slot.device.index)
            return
        self._serial += 1
        attempt = Attempt(assignment, self._serial, slot)
        self._attempts[attempt.attempt_id] = attempt
        slot.held += 1
        self._idle.clear()
        if assignment.inputs:
            attempt.prepare = asyncio.create_task(self._prepare(attempt))
        else:
            self._enqueue(attempt, {})

    async def _prepare(self, attempt: Attempt) -> None:
        refs = list(attempt.assignment.inputs)
        try:
            paths = await asyncio.gather(
                *(self._cache.get(r.digest, r.size, self._fetch) for r in refs)
            )
        except DigestMismatch as exc:
            self._finish(attempt, failed(INPUT_DIGEST_MISMATCH, str(exc), True))
            return
        except (BlobUnavailable, BlobRejected) as exc:
            self._finish(
                attempt, failed(INPUT_UNAVAILABLE, f"could not fetch an input: {exc}", True)
            )
            return
        except Exception as exc:  # e.g. a full disk: the task fails, the worker goes on
            _log.exception("fetching inputs of attempt %s failed", attempt.attempt_id)
            self._finish(
                attempt, failed(INPUT_UNAVAILABLE, f"could not store an input: {exc}", True)
            )
            return
        self._enqueue(attempt, {r.name: p for r, p in zip(refs, paths, strict=True)})

    def _enqueue(self, attempt: Attempt, inputs: dict[str, Path]) -> None:
        attempt.inputs = inputs
        attempt.phase = "queued"
        attempt.slot.ready.append(attempt)
        attempt.slot.wake.set()

    async def _slot_loop(self, slot: Slot) -> None:
        while True:
            await slot.wake.wait()
            slot.wake.clear()
            while slot.ready:
                batch = [slot.ready.popleft() for _ in range(min(len(slot.ready), MAX_BATCH))]
                for attempt in batch:
                    attempt.phase = "running"
                    slot.running[attempt.serial] = attempt
                await self._run_batch(slot, batch)

    async def _run_batch(self, slot: Slot, batch: list[Attempt]) -> None:
        try:
            tasks = [_child_task(a) for a in batch]
            await slot.runner.run(tasks, functools.partial(self._on_outcome, slot))
        except Exception as exc:  # e.g. the child process cannot be started
            _log.exception("device %d could not run its tasks", slot.device.index)
            message = f"the executor process could not run: {exc}"
            for attempt in batch:
                outcome = Outcome(
                    attempt.serial, code=EXECUTOR_CRASHED, message=message, retryable=True
                )
                self._on_outcome(slot, outcome)

    def _on_outcome(self, slot: Slot, outcome: Outcome) -> None:
        attempt = slot.running.pop(outcome.serial, None)
        if attempt is not None:
            self._finish(attempt, outcome)

    def _finish(self, attempt: Attempt, outcome: Outcome) -> None:
        if self._attempts.pop(attempt.attempt_id, None) is None:
            return  # already released (cancelled while its outcome was on the way)
        attempt.slot.held -= 1
        if not outcome.cancelled:
            self._report(attempt.assignment, attempt.slot.device, outcome)
        if not self._attempts:
            self._idle.set()
        self._on_release(attempt.slot.device.index)

    def cancel(self, attempt_ids: Iterable[str], reason: str) -> None:
        """Stops the attempts; no outcome is reported for them."""
        for attempt_id in attempt_ids:
            attempt = self._attempts.get(attempt_id)
            if attempt is None:
                continue
            _log.info("cancelling attempt %s: %s", attempt_id, reason or "no reason given")
            self._stop(attempt)
            self._finish(attempt, Outcome(attempt.serial, cancelled=True))

    def preempt(self, device_index: int, code: str, message: str) -> list[str]:
        """Stops everything held for a device now (a running task by killing its process,
        which frees its GPU memory) and reports each attempt as failed with `code`."""
        held = [a for a in self._attempts.values() if a.slot.device.index == device_index]
        for attempt in held:
            self._stop(attempt)
            self._finish(
                attempt, Outcome(attempt.serial, code=code, message=message, retryable=True)
            )
        return [a.attempt_id for a in held]

    def running_on(self, device_index: int) -> list[str]:
        slot = self.slots.get(device_index)
        return [a.attempt_id for a in slot.running.values()] if slot else []

    def _stop(self, attempt: Attempt) -> None:
        if attempt.phase == "running":
            attempt.slot.runner.cancel(attempt.serial)  # its outcome comes back cancelled
            attempt.slot.running.pop(attempt.serial, None)
        elif attempt.phase == "queued":
            attempt.slot.ready.remove(attempt)
        elif attempt.prepare is not None:
            attempt.prepare.cancel()

    async def close(self, force: bool) -> None:
        for attempt in self._attempts.values():
            if attempt.prepare is not None:
                attempt.prepare.cancel()
        for loop in self._loops:
            loop.cancel()
        if force:
            for slot in self.slots.values():
                slot.runner.kill()
        await asyncio.gather(*self._loops, return_exceptions=True)
        await asyncio.gather(*(s.runner.close() for s in self.slots.values()))


def _child_task(attempt: Attempt) -> ChildTask:
    a = attempt.assignment
    return ChildTask(attempt.serial, a.kind, a.params, attempt.inputs)
