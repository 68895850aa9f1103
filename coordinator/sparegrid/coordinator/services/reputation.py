"""What the coordinator knows of each node's results, and what follows from it.

A node earns trust with results that other owners' nodes confirmed (its streak); the
adaptive policy cross-checks a new node's every result, then fewer as its streak grows,
never fewer than a floor. An invalid result resets the streak and adds a strike; at the
strike limit the node is quarantined: no more work until the operator reinstates it.
Strikes are forgiven one at a time after long runs of validated results, so an honest
node with a rare hardware fault is not shut out for life.
"""

import logging
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from sparegrid.coordinator.clock import Clock
from sparegrid.coordinator.domain import Reputation, Standing
from sparegrid.coordinator.services.events import EventKind, Events
from sparegrid.coordinator.store.base import Store

log = logging.getLogger("sparegrid.coordinator.reputation")


@dataclass
class TrustConfig:
    # results confirmed by other owners before any result of the node goes unchecked
    warmup: int = 20
    # the least share of a trusted node's results that are still cross-checked
    floor: float = 0.05
    # invalid results (not yet forgiven) that quarantine a node
    max_strikes: int = 3
    # consecutive validated results that forgive one strike
    forgive_after: int = 500


class Reputations:
    """Reputations of every node seen, cached in memory, written through to the store."""

    events: Events | None = None  # quarantines, bans, reinstatements and approvals
    # called with a node's id when its standing changes: quarantined, banned, approved or
    # reinstated (the app ends its session, so the worker hears it when it reconnects)
    on_standing: Callable[[str], None] | None = None

    def __init__(
        self, store: Store, clock: Clock, config: TrustConfig, rng: random.Random | None = None
    ) -> None:
        self._store = store
        self._clock = clock
        self.config = config
        self._rng = rng or random.Random()
        self._cache: dict[str, Reputation] = {}
        self._unsaved: dict[str, Reputation] | None = None  # inside `batched`

    def load(self) -> None:
        self._cache = {r.node_id: r for r in self._store.get_reputations()}

    def get(self, node_id: str) -> Reputation:
        found = self._cache.get(node_id)
        return found if found is not None else Reputation(node_id)

    def all(self) -> dict[str, Reputation]:
        return dict(self._cache)

    def blocked(self, node_id: str) -> bool:
        """Whether the node may get no work (quarantined or banned)."""
        found = self._cache.get(node_id)
        return found is not None and found.standing != Standing.ACTIVE

    def check_rate(self, node_id: str) -> float:
        """The share of this node's results the adaptive policy cross-checks."""
        streak, cfg = self.get(node_id).streak, self.config
        if streak < cfg.warmup:
            return 1.0
        return max(cfg.floor, min(1.0, cfg.warmup / (streak + 1)))

    def wants_check(self, node_id: str) -> bool:
        return self._rng.random() < self.check_rate(node_id)

    # --- outcomes -----------------------------------------------------------

    def validated(self, node_ids: list[str]) -> None:
        """Results of these nodes were confirmed by another owner's result."""
        changed = []
        for node_id in node_ids:
            rep = self._mutable(node_id)
            rep.streak += 1
            rep.validated += 1
            if rep.strikes and rep.streak % self.config.forgive_after == 0:
                rep.strikes -= 1
            changed.append(rep)
        self._save(changed)

    def accepted_unchecked(self, node_id: str) -> None:
        """A result accepted without comparison: counted, but it earns no trust."""
        rep = self._mutable(node_id)
        rep.validated += 1
        self._save([rep])

    def invalid(self, node_id: str, reason: str) -> Reputation:
        """A result of the node was outvoted, forged or claimed for work never leased."""
        rep = self._mutable(node_id)
        rep.streak = 0
        rep.invalid += 1
        rep.strikes += 1
        if rep.standing == Standing.ACTIVE and rep.strikes >= self.config.max_strikes:
            rep.standing = Standing.QUARANTINED
            rep.reason = f"{rep.strikes} invalid results; last: {reason}"
            log.warning("node %s quarantined: %s", node_id, rep.reason)
            self._event(EventKind.QUARANTINE, rep)
            self._standing_changed(node_id)
        self._save([rep])
        return rep

    def ban(self, node_id: str, reason: str) -> Reputation:
        rep = self._mutable(node_id)
        rep.standing, rep.reason = Standing.BANNED, reason or "banned by the operator"
        self._event(EventKind.BAN, rep)
        self._standing_changed(node_id)
        self._save([rep])
        return rep

    def hold_for_approval(self, node_id: str) -> None:
        """A node seen for the first time under `--enrollment approve`: no work until the
        operator approves it. A node seen before keeps its standing."""
        if node_id in self._cache:
            return
        rep = self._mutable(node_id)
        rep.standing = Standing.PENDING
        rep.reason = "new node: waits for the operator's approval (sparegrid admin node approve)"
        self._save([rep])

    def approve(self, node_id: str, reason: str) -> Reputation:
        """Lets a node waiting for approval work; refuses to lift a ban or a quarantine."""
        rep = self._mutable(node_id)
        if rep.standing not in (Standing.PENDING, Standing.ACTIVE):
            raise ValueError(
                f"node {node_id} is {rep.standing} ({rep.reason}); "
                "`sparegrid admin node reinstate` lifts that"
            )
        rep.standing, rep.reason = Standing.ACTIVE, reason or "approved by the operator"
        self._event(EventKind.APPROVE, rep)
        self._standing_changed(node_id)
        self._save([rep])
        return rep

    def reinstate(self, node_id: str, reason: str) -> Reputation:
        """Lifts a ban or quarantine; strikes and streak start again from zero."""
        rep = self._mutable(node_id)
        rep.standing, rep.strikes, rep.streak = Standing.ACTIVE, 0, 0
        rep.reason = reason or "reinstated by the operator"
        self._event(EventKind.REINSTATE, rep)
        self._standing_changed(node_id)
        self._save([rep])
        return rep

    def _mutable(self, node_id: str) -> Reputation:
        rep = self._cache.get(node_id)
        if rep is None:
            rep = self._cache[node_id] = Reputation(node_id)
        rep.updated_at = self._clock.now()
        return rep

    def _standing_changed(self, node_id: str) -> None:
        if self.on_standing is not None:
            self.on_standing(node_id)

    def _event(self, kind: EventKind, rep: Reputation) -> None:
        if self.events is not None:
            self.events.emit(
                kind,
                f"node {rep.node_id} is {rep.standing}: {rep.reason}",
                node_id=rep.node_id,
                standing=rep.standing.value,
                strikes=rep.strikes,
            )

    @contextmanager
    def batched(self) -> Iterator[None]:
        """Saves what changes inside once, at its end: one statement for a batch of
        results, not one per result. Nothing is saved when the block fails (the store
        transaction around it rolls back)."""
        if self._unsaved is not None:  # nested: the outer block saves
            yield
            return
        self._unsaved = {}
        try:
            yield
        except BaseException:
            self._unsaved = None
            raise
        unsaved, self._unsaved = self._unsaved, None
        self._save(list(unsaved.values()))

    def _save(self, reps: list[Reputation]) -> None:
        if self._unsaved is not None:
            self._unsaved.update((rep.node_id, rep) for rep in reps)
        elif reps:
            self._store.put_reputations(reps)
