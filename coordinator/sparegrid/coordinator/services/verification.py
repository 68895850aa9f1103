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

Each comparison's `Comparison` (whether two results agree, why, and the metrics) is kept
for the pair: `Verifier.evidence(task, a, b)` gives it back, a disagreement is logged with
it, and a dispute's evidence (settlement.py) is made of them.
"""

import logging
import math
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
    GenerateComparator,
    ImageComparator,
    Reader,
)
from sparegrid.coordinator.services.identity import is_anonymous
from sparegrid.coordinator.services.reputation import Reputations
from sparegrid.v1 import common_pb2

log = logging.getLogger("sparegrid.coordinator.verification")

MAX_REPLICAS = 10
MAX_CACHED = 4096  # comparisons kept (digest-only ones only when they disagree)


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
            detail = f"{len(votes)} results, no {wanted} of them agree"
            return Decision(Outcome.FAILED, detail=detail)
        return Decision(Outcome.PENDING)

    def _known(
        self, job: Job, task: Task, new: Replica, known: list[FileRef], read: Reader
    ) -> Decision:
        found = self._compare(job.kind, task, known, new, read)
        if found.agree:
            method = common_pb2.VALIDATION_METHOD_KNOWN_ANSWER
            detail = "matched the known answer"
            return Decision(Outcome.ACCEPTED, method, detail, [new], confirmed=[new])
        detail = f"did not match the known answer: {found.detail}"
        return Decision(Outcome.FAILED, detail=detail, losers=[new])

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
        comparisons = []
        for a, b in pairs:
            found = self._compare(kind, task, a, b, read)
            comparisons.append(
                {
                    "a": a.node_id,
                    "b": b.node_id,
                    "agree": found.agree,
                    "detail": found.detail,
                    "metrics": _plain(found.metrics),
                }
            )
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


def _plain(metrics: dict[str, object]) -> dict[str, object]:
    """Metrics as JSON holds them: an infinite or undefined float as text."""
    return {
        k: (str(v) if isinstance(v, float) and not math.isfinite(v) else v)
        for k, v in metrics.items()
    }


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
        if "claimed" in crop:  # a generate check: one prefill over the claimed tokens
            shown["check"] = {"prefill": sum(len(c) for c in crop["claimed"])}
        else:
            shown["crop"] = {"frame": crop["frames"][0], "box": crop.get("crop") or crop["tile"]}
    return shown


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
    if not isinstance(comparator, ImageComparator | GenerateComparator):
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
    if "claimed" in p:
        return (
            f"checked: one prefill over {len(p['claimed'])} claimed completions, by a node of "
            "another owner, matched their fingerprints and choices"
        )
    x0, x1, y0, y1 = p.get("crop") or p["tile"]
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
