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
- single (k = m = 1): jobs submitted before verification existed, and known-answer
  tasks; the first result wins (or is compared with the known answer).

Agreement counts owners, not nodes: two results of one owner never make a quorum. And it
counts only vetted owners (identity.py): a result of a node without an owner account is
never a vote or a check. Such a result waits until a vetted owner's node returns the same
answer (or a crop of it that matches), and is then decided as that owner's result would
be alone; it is paid when accepted, and outvoted when the vetted owners agree on another.
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
from sparegrid.coordinator.services.identity import is_anonymous
from sparegrid.coordinator.services.reputation import Reputations
from sparegrid.v1 import common_pb2

log = logging.getLogger("sparegrid.coordinator.verification")

MAX_REPLICAS = 10
MAX_CACHED = 4096  # comparison answers kept


class Outcome(StrEnum):
    ACCEPTED = "accepted"
    PENDING = "pending"  # another result, from a node of another owner, is needed
    FAILED = "failed"  # no agreement within the attempt limit
    HELD = "held"  # accepted on its node's record once a later check vouches (vouching.py)


@dataclass
class Decision:
    outcome: Outcome
    method: "common_pb2.ValidationMethod.ValueType" = common_pb2.VALIDATION_METHOD_UNSPECIFIED
    detail: str = ""
    winners: list[Replica] = field(default_factory=list)  # paid: one per agreeing owner
    losers: list[Replica] = field(default_factory=list)  # outvoted: invalid
    # results a vetted owner other than their own confirmed: they earn their nodes trust
    confirmed: list[Replica] = field(default_factory=list)
    # when the results disagree: what each returned and what each comparison found
    evidence: dict[str, object] | None = None
    voucher: str = ""  # HELD: the node whose later check vouches for it


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
    def __init__(
        self,
        reputations: Reputations,
        comparators: Comparators,
        vetted: Callable[[str], bool] = lambda owner: not is_anonymous(owner),
    ) -> None:
        self.reputations = reputations
        self.comparators = comparators
        self.vetted = vetted  # whether an owner's results count as votes (identity.py)
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
        a connected, vetted node of an owner not among them could run the task; `known`:
        the outputs of a known-answer task."""
        live = [r for r in results if r.state == ReplicaState.PENDING]
        new = live[-1]
        if known is not None:
            return self._known(job, task, new, known, read)
        if job.replicas == 1:
            return Decision(
                Outcome.ACCEPTED, common_pb2.VALIDATION_METHOD_SINGLE, "single result", [new]
            )
        votes = [r for r in live if self.vetted(r.owner)]
        if job.replicas == 0 and len({r.owner for r in votes}) <= 1:
            return self._one_vote(job, task, live, votes, new, read, others_online)
        groups = self._groups(job.kind, task, live, read)
        decision = self._by_votes(job, live, votes, groups)
        if len(groups) > 1:
            decision.evidence = self._evidence(job.kind, task, groups, read)
        return decision

    def _by_votes(
        self, job: Job, live: list[Replica], votes: list[Replica], groups: list[list[Replica]]
    ) -> Decision:
        """The decision once results of two or more vetted owners are in (or any number under
        a quorum policy): the group with the most vetted owners wins if it has enough."""
        best = max((g for g in groups if any(not r.params for r in g)), key=self._votes)
        agreeing = self._votes(best)
        wanted = job.quorum if job.replicas else 2
        enough = len(votes) >= job.replicas  # fixed policies gather all k first
        if agreeing >= wanted and enough:
            method = (
                common_pb2.VALIDATION_METHOD_QUORUM
                if job.replicas
                else common_pb2.VALIDATION_METHOD_CROSS_CHECKED
            )
            detail = f"{agreeing} of {len(votes)} results from different owners agreed"
            if job.replicas:
                detail += f" (policy {policy_text(job)})"
            winners = self._winners(job, best)
            if len(votes) == 2 and winners[-1].params:
                method = common_pb2.VALIDATION_METHOD_SPOT_CHECKED
                detail = _spot_detail(winners[-1])
            losers = [r for r in live if all(r is not w for w in best)]
            return Decision(Outcome.ACCEPTED, method, detail, winners, losers, winners)
        if len(votes) >= max(job.replicas, 2) + job.max_attempts:
            return Decision(
                Outcome.FAILED, detail=f"{len(votes)} results, no {wanted} of them agree"
            )
        return Decision(Outcome.PENDING)

    def _known(
        self, job: Job, task: Task, new: Replica, known: list[FileRef], read: Reader
    ) -> Decision:
        comparator = self.comparators.for_kind(job.kind)
        if comparator.agree(decode_params(task.params), known, new.outputs, read):
            method = common_pb2.VALIDATION_METHOD_KNOWN_ANSWER
            detail = "matched the known answer"
            return Decision(Outcome.ACCEPTED, method, detail, [new], confirmed=[new])
        return Decision(Outcome.FAILED, detail="did not match the known answer", losers=[new])

    def _one_vote(
        self,
        job: Job,
        task: Task,
        live: list[Replica],
        votes: list[Replica],
        new: Replica,
        read: Reader,
        others_online: Callable[[], bool],
    ) -> Decision:
        """Adaptive, with results of at most one vetted owner: that owner's node decides on
        its record (and an anonymous result never decides alone)."""
        if not votes or new is not votes[-1] or len(votes) > 1:
            return Decision(Outcome.PENDING)  # anonymous results wait for a vetted check
        vote = votes[0]
        groups = self._groups(job.kind, task, live, read)
        decision = self._vote_alone(job, live, vote, groups, others_online)
        if len(groups) > 1:
            decision.evidence = self._evidence(job.kind, task, groups, read)
        return decision

    def _vote_alone(
        self,
        job: Job,
        live: list[Replica],
        vote: Replica,
        groups: list[list[Replica]],
        others_online: Callable[[], bool],
    ) -> Decision:
        group = next(g for g in groups if vote in g)
        if all(r.params for r in group):
            return Decision(Outcome.PENDING)  # a crop alone never stands for the task
        checked = [r for r in group if r is not vote]  # anonymous results that agree
        trusted = not self.reputations.wants_check(vote.node_id)
        if trusted and checked:
            method = common_pb2.VALIDATION_METHOD_CROSS_CHECKED
            detail = (
                f"checked by a node of owner {vote.owner}, whose record lets its results "
                "through unchecked"
            )
            if vote.params:
                method, detail = common_pb2.VALIDATION_METHOD_SPOT_CHECKED, _spot_detail(vote)
        elif trusted:
            rate = self.reputations.check_rate(vote.node_id)
            detail = f"node's record let it through unchecked (check rate {rate:.0%})"
            method = common_pb2.VALIDATION_METHOD_TRUSTED
        elif not others_online():
            detail = "no node of another owner was online to cross-check it"
            method = common_pb2.VALIDATION_METHOD_UNCHECKED
        else:
            return Decision(Outcome.PENDING)
        losers = [r for r in live if all(r is not g for g in group)]
        winners = self._winners(job, group)
        if trusted and self.reputations.check_rate(vote.node_id) > 0 and others_online():
            # accepted once a later check of its node vouches for it
            return Decision(
                Outcome.HELD, method, detail, winners, losers, checked, voucher=vote.node_id
            )
        return Decision(
            Outcome.ACCEPTED, method, detail, winners, losers, checked if trusted else []
        )

    def _votes(self, group: list[Replica]) -> int:
        """Owners whose results count, among a group of agreeing results."""
        return len({r.owner for r in group if self.vetted(r.owner)})

    def _winners(self, job: Job, group: list[Replica]) -> list[Replica]:
        """The results paid for a task: one per owner, whole results first (the first is
        the task's output), vetted owners before anonymous nodes, at most as many as the
        job's escrow holds per task."""
        ranked = sorted(
            _one_per_owner(group), key=lambda r: (bool(r.params), not self.vetted(r.owner))
        )
        return ranked[: job.max_paid_results]

    def _evidence(
        self, kind: str, task: Task, groups: list[list[Replica]], read: Reader
    ) -> dict[str, object]:
        """What disagreed: every result, and each one's comparison with the first result of
        every group (answers cached: nothing is decoded twice)."""
        results = [r for g in groups for r in g]
        leaders = [g[0] for g in groups]
        pairs = [(a, b) for i, a in enumerate(leaders) for b in leaders[i + 1 :]]
        pairs += [(g[0], r) for g in groups for r in g[1:]]
        comparisons = [
            {"a": a.node_id, "b": b.node_id, "agree": self._agree(kind, task, a, b, read)}
            for a, b in pairs
        ]
        return {
            "results": [_described(r, self.vetted(r.owner)) for r in results],
            "groups": [[r.node_id for r in g] for g in groups],
            "comparisons": comparisons,
        }

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


def _described(result: Replica, vetted: bool) -> dict[str, object]:
    """One result, for a dispute's evidence."""
    shown: dict[str, object] = {
        "node": result.node_id,
        "owner": result.owner,
        "vetted": vetted,
        "attempt": result.attempt_id,
        "outputs": {ref.name: ref.digest for ref in result.outputs},
    }
    if result.params:
        crop = decode_params(result.params)
        shown["crop"] = {"frame": crop["frames"][0], "box": crop["tile"]}
    return shown


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


def _one_per_owner(group: list[Replica]) -> list[Replica]:
    seen: set[str] = set()
    first: list[Replica] = []
    for result in group:
        if result.owner not in seen:
            seen.add(result.owner)
            first.append(result)
    return first
