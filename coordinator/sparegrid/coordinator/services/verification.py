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

Each comparison's `Comparison` (whether two results agree, why, and the metrics) is kept
for the pair: `Verifier.evidence(task, a, b)` gives it back, for dispute evidence, and a
disagreement is logged with it.
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
    Comparison,
    ExactComparator,
    ImageComparator,
    Reader,
)
from sparegrid.coordinator.services.reputation import Reputations
from sparegrid.v1 import common_pb2

log = logging.getLogger("sparegrid.coordinator.verification")

MAX_REPLICAS = 10
MAX_CACHED = 4096  # comparisons kept (digest-only ones only when they disagree)


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
        # comparisons of results (frames, tensors), worked out ahead of settlement off the
        # event loop (precompute) or during it; shared with that worker thread
        self._compared: dict[tuple[object, ...], Comparison] = {}
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

    def evidence(
        self, task: Task, a: Replica | list[FileRef], b: Replica | list[FileRef]
    ) -> Comparison | None:
        """The comparison last made of two results of a task (either order; a known
        answer's outputs stand for a result), or None: never compared, compared by digest
        and equal, or no longer kept (the latest MAX_CACHED are)."""
        with self._lock:
            return self._compared.get(_key(task, a, b))

    def _agree(self, kind: str, task: Task, a: Replica, b: Replica, read: Reader) -> bool:
        return self._compare(kind, task, a, b, read).agree

    def _compare(
        self, kind: str, task: Task, a: Replica | list[FileRef], b: Replica, read: Reader
    ) -> Comparison:
        comparator = self.comparators.for_kind(kind)
        key = _key(task, a, b)
        with self._lock:
            known = self._compared.get(key)
        if known is not None:
            return known
        params = {} if isinstance(comparator, ExactComparator) else decode_params(task.params)
        found = _compare(comparator, params, a, b, read)
        if not found.agree:
            log.info(
                "task %s: results of %s and %s disagree: %s %s",
                task.id,
                _who(a),
                _who(b),
                found.detail,
                found.metrics,
            )
        if found.agree and isinstance(comparator, ExactComparator):
            return found  # digests only: nothing worth keeping
        with self._lock:
            if len(self._compared) >= MAX_CACHED:
                del self._compared[next(iter(self._compared))]  # the oldest
            self._compared[key] = found
        return found

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
            found = self._compare(job.kind, task, known, new, read)
            if found.agree:
                method = common_pb2.VALIDATION_METHOD_KNOWN_ANSWER
                return Decision(Outcome.ACCEPTED, method, "matched the known answer", [new])
            detail = f"did not match the known answer: {found.detail}"
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
            detail = f"{len(live)} results, no {wanted} of them agree"
            last = self.evidence(task, best[0], new) if best[0] is not new else None
            if last is not None:
                detail += f" (the newest against the best supported: {last.detail})"
            return Decision(Outcome.FAILED, detail=detail)
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


def _compare(
    comparator: Comparator,
    params: dict[str, object],
    a: Replica | list[FileRef],
    b: Replica,
    read: Reader,
) -> Comparison:
    """Two results of a task compared; a spot check's crop is compared with the same
    pixels of a whole result (two crops have nothing in common to compare)."""
    if isinstance(a, list):  # a known answer's outputs
        return comparator.compare(params, a, b.outputs, read)
    if not a.params and not b.params:
        return comparator.compare(params, a.outputs, b.outputs, read)
    if a.params and b.params:
        return Comparison(False, "two spot checks' crops", {"rule": "crops"})
    if not isinstance(comparator, ImageComparator):
        return Comparison(False, "a spot check of a kind that has none", {"rule": "crops"})
    whole, crop = (a, b) if b.params else (b, a)
    return comparator.compare_crop(
        params, whole.outputs, decode_params(crop.params), crop.outputs, read
    )


Signature = tuple[bytes, tuple[tuple[str, str], ...]]


def _signature(result: Replica | list[FileRef]) -> Signature:
    """What a comparison of a result depends on: what it ran, and its outputs."""
    if isinstance(result, list):
        return b"known answer", tuple(sorted((r.name, r.digest) for r in result))
    return result.params, tuple(sorted((r.name, r.digest) for r in result.outputs))


def _key(task: Task, a: Replica | list[FileRef], b: Replica | list[FileRef]) -> tuple[object, ...]:
    return (task.id, *sorted([_signature(a), _signature(b)]))


def _who(result: Replica | list[FileRef]) -> str:
    if isinstance(result, list):
        return "the known answer"
    what = "a spot check" if result.params else "a result"
    return f"{what} of node {result.node_id or '(known answer)'}"


def _spot_detail(crop: Replica) -> str:
    p = decode_params(crop.params)
    x0, x1, y0, y1 = p.get("crop") or p["tile"]
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
