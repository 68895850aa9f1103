"""Decides, from the results a task has so far, whether one is accepted, more are needed,
or the task cannot be settled.

Policies, per job:

- `replicas=k, quorum=m` (k >= 2): at least k results are gathered, from nodes of
  different owners, and accepted once m of them agree; more are run while they disagree,
  up to k + the job's attempt limit.
- adaptive (k = 0, the default): a first result is cross-checked with probability given by
  its node's reputation (always for a new node, never less than the floor); a checked task
  is accepted once two owners agree. A rendered frame's first check is a spot check: one
  random crop of it, re-rendered (spotcheck.py); a result that is only a crop can confirm
  or dispute a whole one, never stand for the task. When no connected node of another
  owner could run the check, the single result is accepted and the receipt says it went
  unchecked.
- single (k = m = 1): jobs submitted before verification existed; the first result wins.

Agreement counts owners, not nodes: two results of one owner never make a quorum.
"""

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

from sparegrid.coordinator.domain import FileRef, Job, Replica, ReplicaState, Task
from sparegrid.coordinator.kinds import decode_params
from sparegrid.coordinator.services.comparators import (
    Comparator,
    Comparators,
    ExactComparator,
    ImageComparator,
    Reader,
)
from sparegrid.coordinator.services.reputation import Reputations
from sparegrid.v1 import common_pb2

log = logging.getLogger("sparegrid.coordinator.verification")

MAX_REPLICAS = 10
MAX_CACHED = 4096  # comparison answers kept


class Outcome(StrEnum):
    ACCEPTED = "accepted"
    PENDING = "pending"  # another result, from a node of another owner, is needed
    FAILED = "failed"  # no agreement within the attempt limit


@dataclass
class Decision:
    outcome: Outcome
    method: "common_pb2.ValidationMethod.ValueType" = common_pb2.VALIDATION_METHOD_UNSPECIFIED
    detail: str = ""
    winners: list[Replica] = field(default_factory=list)  # paid: one per agreeing owner
    losers: list[Replica] = field(default_factory=list)  # outvoted: invalid


def policy_text(job: Job) -> str:
    if job.replicas == 0:
        return "adaptive"
    if job.replicas == 1:
        return "single result"
    return f"{job.quorum} of {job.replicas}"


def check_policy(replicas: int, quorum: int) -> str:
    """What is wrong with a requested policy, or "" when it is fine."""
    if replicas == 0 and quorum == 0:
        return ""
    if not 2 <= replicas <= MAX_REPLICAS:
        return f"replicas must be 0 (adaptive) or 2 to {MAX_REPLICAS}, got {replicas}"
    if not 2 <= quorum <= replicas:
        return f"quorum must be from 2 to replicas ({replicas}), got {quorum}"
    if 2 * quorum <= replicas:
        return f"quorum {quorum} of {replicas} is not a majority: two answers could both win"
    return ""


class Verifier:
    def __init__(self, reputations: Reputations, comparators: Comparators) -> None:
        self.reputations = reputations
        self.comparators = comparators
        # answers of costly comparisons (frames, tensors), worked out ahead of settlement
        # off the event loop (precompute) or during it; shared with that worker thread
        self._agreed: dict[tuple[object, ...], bool] = {}
        self._lock = threading.Lock()

    def precompute(self, pairs: list[tuple[str, Task, Replica, Replica]], read: Reader) -> None:
        """Works out whether each (kind, task, held result, new result) agrees, for a batch
        about to be settled; runs in a worker thread, so that decoding frames and tensors
        (up to seconds) never holds up the event loop. A comparison that fails here is
        left to settlement, which makes it again and meets the same error."""
        for kind, task, a, b in pairs:
            try:
                self._agree(kind, task, a, b, read)
            except Exception:
                log.debug("comparing results of task %s ahead failed", task.id, exc_info=True)

    def _agree(self, kind: str, task: Task, a: Replica, b: Replica, read: Reader) -> bool:
        comparator = self.comparators.for_kind(kind)
        if isinstance(comparator, ExactComparator):
            return _agree(comparator, {}, a, b, read)  # digests only: nothing to keep
        key = (task.id, *sorted([_signature(a), _signature(b)]))
        with self._lock:
            known = self._agreed.get(key)
        if known is not None:
            return known
        answer = _agree(comparator, decode_params(task.params), a, b, read)
        with self._lock:
            if len(self._agreed) >= MAX_CACHED:
                del self._agreed[next(iter(self._agreed))]  # the oldest
            self._agreed[key] = answer
        return answer

    def decide(
        self,
        job: Job,
        task: Task,
        results: list[Replica],
        read: Reader,
        others_online: Callable[[], bool],
        known: list[FileRef] | None = None,
    ) -> Decision:
        """`results`: the task's pending results, the newest last; `others_online`: whether
        a connected node of an owner not among them could run the task; `known`: the
        outputs of a known-answer task."""
        live = [r for r in results if r.state == ReplicaState.PENDING]
        new = live[-1]
        if known is not None:
            comparator = self.comparators.for_kind(job.kind)
            if comparator.agree(decode_params(task.params), known, new.outputs, read):
                method = common_pb2.VALIDATION_METHOD_KNOWN_ANSWER
                return Decision(Outcome.ACCEPTED, method, "matched the known answer", [new])
            detail = "did not match the known answer"
            return Decision(Outcome.FAILED, detail=detail, losers=[new])
        if job.replicas == 1:
            return Decision(
                Outcome.ACCEPTED, common_pb2.VALIDATION_METHOD_SINGLE, "single result", [new]
            )
        if job.replicas == 0 and len(live) == 1:
            if not self.reputations.wants_check(new.node_id):
                rate = self.reputations.check_rate(new.node_id)
                detail = f"node's record let it through unchecked (check rate {rate:.0%})"
                return Decision(
                    Outcome.ACCEPTED, common_pb2.VALIDATION_METHOD_TRUSTED, detail, [new]
                )
            if not others_online():
                detail = "no node of another owner was online to cross-check it"
                return Decision(
                    Outcome.ACCEPTED, common_pb2.VALIDATION_METHOD_UNCHECKED, detail, [new]
                )
            return Decision(Outcome.PENDING)
        groups = self._groups(job.kind, task, live, read)
        best = max((g for g in groups if any(not r.params for r in g)), key=_owners)
        agreeing = _owners(best)
        wanted = job.quorum if job.replicas else 2
        enough = len(live) >= job.replicas  # fixed policies gather all k first
        if agreeing >= wanted and enough:
            method = (
                common_pb2.VALIDATION_METHOD_QUORUM
                if job.replicas
                else common_pb2.VALIDATION_METHOD_CROSS_CHECKED
            )
            detail = f"{agreeing} of {len(live)} results from different owners agreed"
            if job.replicas:
                detail += f" (policy {policy_text(job)})"
            winners = sorted(_one_per_owner(best), key=lambda r: bool(r.params))  # whole first
            if len(live) == 2 and winners[-1].params:
                method = common_pb2.VALIDATION_METHOD_SPOT_CHECKED
                detail = _spot_detail(winners[-1])
            losers = [r for r in live if all(r is not w for w in best)]
            return Decision(Outcome.ACCEPTED, method, detail, winners, losers)
        if len(live) >= max(job.replicas, 2) + job.max_attempts:
            return Decision(
                Outcome.FAILED, detail=f"{len(live)} results, no {wanted} of them agree"
            )
        return Decision(Outcome.PENDING)

    def _groups(
        self, kind: str, task: Task, live: list[Replica], read: Reader
    ) -> list[list[Replica]]:
        """Results grouped with the first result they agree with."""
        groups: list[list[Replica]] = []
        for result in live:
            for group in groups:
                if self._agree(kind, task, group[0], result, read):
                    group.append(result)
                    break
            else:
                groups.append([result])
        return groups


def _agree(
    comparator: Comparator, params: dict[str, object], a: Replica, b: Replica, read: Reader
) -> bool:
    """Two results of a task agree; a spot check's crop is compared with the same pixels
    of a whole result (two crops have nothing in common to compare)."""
    if not a.params and not b.params:
        return comparator.agree(params, a.outputs, b.outputs, read)
    if (a.params and b.params) or not isinstance(comparator, ImageComparator):
        return False
    whole, crop = (a, b) if b.params else (b, a)
    return comparator.agree_crop(
        params, whole.outputs, decode_params(crop.params), crop.outputs, read
    )


def _signature(result: Replica) -> tuple[bytes, tuple[tuple[str, str], ...]]:
    """What a comparison of a result depends on: what it ran, and its outputs."""
    return result.params, tuple(sorted((r.name, r.digest) for r in result.outputs))


def _spot_detail(crop: Replica) -> str:
    p = decode_params(crop.params)
    x0, x1, y0, y1 = p["tile"]
    return (
        f"spot check: a {x1 - x0}x{y1 - y0} crop of frame {p['frames'][0]} at ({x0}, {y0}), "
        "re-rendered by a node of another owner, matched"
    )


def _owners(group: list[Replica]) -> int:
    return len({r.owner for r in group})


def _one_per_owner(group: list[Replica]) -> list[Replica]:
    seen: set[str] = set()
    first: list[Replica] = []
    for result in group:
        if result.owner not in seen:
            seen.add(result.owner)
            first.append(result)
    return first
