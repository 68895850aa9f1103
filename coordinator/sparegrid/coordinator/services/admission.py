"""Admits worker registrations at a bounded rate, so that a storm of reconnecting workers
(a coordinator restart, a network coming back) is spread out instead of landing at once.

A token bucket: `rate` registrations a second, `burst` at once. A registration that finds
no token but would get one within `hold` seconds is admitted with that wait: it keeps its
stream and goes ahead when its turn comes, which costs the coordinator a timer. One that
would wait longer is refused with the time after which its turn would fall within `hold`,
counting every refusal before it as a place taken in line, so that refused workers come
back spread out at the rate they can be admitted rather than all at once again. The line
reaches at most `max_wait` seconds ahead: refused callers that never come back (a flood)
would otherwise push it, and every honest worker's hint, without end. A refusal costs
more than a wait (the worker dials again: a new connection and a new Hello), so the line
held inside is what keeps a storm cheap; `hold` stays well under the worker's 30 s
handshake timeout. Waits end on a `tick` of the clock (0.1 s), so that the registrations
whose turns fall in one tick go ahead together and are attached in one group commit, not
one commit (and one fsync) each. Refusals are logged, at most one line per `log_every`
seconds.

Each caller address (an IPv4 address, an IPv6 /64) has a bucket of its own in front of
that one, of `share` of the rate and of the burst: one address cannot take more than that
share of the turns while others wait, and a turn its bucket does not cover is refused
without taking a place in line. Loopback is exempt (`exempt_loopback`): a fleet run on one
host, or a proxy on the coordinator's host, arrives from one address.

An address may also hold at most `anonymous_sessions` worker sessions open at once that
sent no owner account's key, counted from their first message: a node key costs nothing,
so without it one address could hold sessions (and node rows) without end. An owner's
sessions are not counted: its account is what the operator gave out.

Nor may one address bring node keys never seen before without end: closing each session
and opening the next under a fresh key, it would add a node row each time (100 a second at
its share, millions a day, each kept a day by the sweeper), filling the database and
slowing every query over nodes. Each address has a second bucket, of `new_anonymous_nodes`
new keys at once and as many more an hour (NewNodes). Only a node without an owner
account's key whose key the coordinator has no row for takes from it: a worker that
restarts keeps its key and is never counted, and an owner's nodes are not counted.
"""

import ipaddress
import logging
import math
from dataclasses import dataclass
from typing import NamedTuple

from sparegrid.coordinator.clock import Clock

log = logging.getLogger("sparegrid.coordinator.admission")


@dataclass
class AdmissionConfig:
    rate: float = 500.0  # registrations admitted per second (0: no limit)
    burst: int = 500  # admitted at once before the rate applies
    hold: float = 10.0  # the longest wait for a turn that is admitted rather than refused
    tick: float = 0.1  # waits end on a multiple of this: those admitted together go together
    log_every: float = 5.0  # seconds between two log lines about refusals
    min_wait: float = 0.5  # the shortest retry hint: sooner only makes more refusals
    max_wait: float = 20.0  # the longest retry hint: the line reaches no further ahead
    share: float = 0.2  # of the rate and the burst, what one address may take (1: no limit)
    exempt_loopback: bool = True  # callers on the coordinator's host have no share
    max_addresses: int = 10_000  # addresses remembered (full buckets are forgotten first)
    # sessions without an owner account's key one address may hold open at once, their
    # handshakes included (0: no limit); loopback is exempt where `exempt_loopback`
    anonymous_sessions: int = 1_000
    # node keys never seen before, of nodes without an owner account's key, one address
    # may bring at once, and as many more an hour (0: no limit); loopback is exempt too
    new_anonymous_nodes: int = 1_000


class Decision(NamedTuple):
    """Admitted: go ahead after `wait` seconds (0: now). Refused: retry after `wait`."""

    admitted: bool
    wait: float


class Admission:
    def __init__(self, clock: Clock, config: AdmissionConfig) -> None:
        self.clock = clock
        self.config = config
        self._tokens = float(config.burst)  # below 0: turns promised to those waiting
        self._updated = clock.now()
        self._line_until = self._updated  # the last place promised to a refused one
        self._addresses: dict[str, tuple[float, float]] = {}  # address -> tokens, updated
        self.admitted = 0
        self.waited = 0  # admitted after a wait for their turn (a metric)
        self.refused = 0  # in all (a metric)
        self.refused_share = 0  # of those, past their address's share (a metric)
        self._unlogged = 0
        self._logged_at = float("-inf")
        self.sessions: dict[str, int] = {}  # address -> anonymous sessions open
        self.new_nodes = NewNodes(clock, config)

    def open_session(self, address: str) -> bool:
        """Counts a session without an owner's key from `address` until `close_session`;
        False (not counted) when the address holds `anonymous_sessions` already."""
        cfg = self.config
        if not cfg.anonymous_sessions or not address or self._loopback_exempt(address):
            return True
        held = self.sessions.get(address, 0)
        if held >= cfg.anonymous_sessions:
            return False
        self.sessions[address] = held + 1
        return True

    def close_session(self, address: str) -> None:
        held = self.sessions.get(address, 0)
        if held > 1:
            self.sessions[address] = held - 1
        else:
            self.sessions.pop(address, None)

    def admit(self, address: str = "") -> Decision:
        """Whether a registration from `address` ("": not counted per address) may go
        ahead, and after how long (see Decision)."""
        cfg = self.config
        if cfg.rate <= 0:
            self.admitted += 1
            return Decision(True, 0.0)
        now = self.clock.now()
        if self._shared(address):
            own = self._own_tokens(address, now)
            if own < 1.0:  # past its share: no token taken, no place in line
                wait = (1.0 - own) / (cfg.rate * cfg.share)
                self.refused_share += 1
                return self._refuse(now, min(max(wait, cfg.min_wait), cfg.max_wait))
            self._remember(address, own - 1.0, now)  # a turn tried, admitted or not
        self._tokens = min(float(cfg.burst), self._tokens + (now - self._updated) * cfg.rate)
        self._updated = now
        turn = max(0.0, (1.0 - self._tokens) / cfg.rate)  # until its token is there
        if turn <= cfg.hold + 1e-6:  # one told to come back at its turn finds it
            self._tokens -= 1.0
            self.admitted += 1
            self.waited += turn > 0
            if turn > 0 and cfg.tick > 0:
                turn = math.ceil((now + turn) / cfg.tick) * cfg.tick - now
            return Decision(True, turn)
        # back when its turn would fall within the hold, after those refused before it,
        # but never further ahead than max_wait: a refused caller may not come back at all
        line = max(self._line_until + 1.0 / cfg.rate, now + turn - cfg.hold)
        self._line_until = min(line, now + cfg.max_wait)
        return self._refuse(now, max(self._line_until - now, cfg.min_wait))

    def _shared(self, address: str) -> bool:
        """Whether `address` is held to its share of the turns."""
        cfg = self.config
        if not address or cfg.share >= 1.0:
            return False
        return not self._loopback_exempt(address)

    def _loopback_exempt(self, address: str) -> bool:
        return _loopback_exempt(self.config, address)

    def _own_tokens(self, address: str, now: float) -> float:
        cfg = self.config
        burst = max(1.0, cfg.burst * cfg.share)
        tokens, updated = self._addresses.get(address, (burst, now))
        return min(burst, tokens + (now - updated) * cfg.rate * cfg.share)

    def _remember(self, address: str, tokens: float, now: float) -> None:
        """Keeps an address's bucket, most recent last; past `max_addresses`, forgets the
        buckets that are full again, then the least recently used half."""
        self._addresses.pop(address, None)
        if len(self._addresses) >= self.config.max_addresses:
            burst = max(1.0, self.config.burst * self.config.share)
            for key in [a for a in self._addresses if self._own_tokens(a, now) >= burst]:
                del self._addresses[key]
            if len(self._addresses) >= self.config.max_addresses:
                for key in list(self._addresses)[: len(self._addresses) // 2 + 1]:
                    del self._addresses[key]
        self._addresses[address] = (tokens, now)

    def _refuse(self, now: float, wait: float) -> Decision:
        cfg = self.config
        self.refused += 1
        self._unlogged += 1
        if now - self._logged_at >= cfg.log_every:
            log.warning(
                "registration storm: refused %d registration(s) since the last note "
                "(admitting %g a second, %d at once, a line of %g s, %g of that to one "
                "address); the latest was told to retry in %.1f s",
                self._unlogged,
                cfg.rate,
                cfg.burst,
                cfg.hold,
                cfg.share,
                wait,
            )
            self._logged_at, self._unlogged = now, 0
        return Decision(False, wait)


def _loopback_exempt(config: AdmissionConfig, address: str) -> bool:
    """Whether `address` is on the coordinator's host and the config exempts it."""
    if not config.exempt_loopback:
        return False
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:  # a network (an IPv6 /64) or no address at all
        return False


class NewNodes:
    """The node keys never seen before one address may bring, without an owner account's
    key: a token bucket per address of `new_anonymous_nodes` at once (a lab behind one NAT
    address registering together) and as many more an hour.

    The buckets kept are bounded, so that a caller rotating addresses cannot grow them
    without end: a bucket full again is the same as none and is forgotten first, then the
    least recently used half, once `max_addresses` are kept."""

    def __init__(self, clock: Clock, config: AdmissionConfig) -> None:
        self.clock = clock
        self.config = config
        self.buckets: dict[str, tuple[float, float]] = {}  # address -> tokens, updated
        self.refused = 0  # a metric
        self._unlogged = 0
        self._logged_at = float("-inf")

    @property
    def burst(self) -> float:
        return float(self.config.new_anonymous_nodes)

    def take(self, address: str) -> float:
        """Counts a new key from `address`: 0 when it may bring one, else the seconds until
        it may (nothing counted)."""
        cfg = self.config
        if cfg.new_anonymous_nodes <= 0 or not address or _loopback_exempt(cfg, address):
            return 0.0
        now = self.clock.now()
        tokens = self._tokens(address, now)
        if tokens < 1.0 - 1e-9:  # one told to come back when its key is due finds it
            self.refused += 1
            self._unlogged += 1
            if now - self._logged_at >= cfg.log_every:
                log.warning(
                    "refused %d new node key(s) without an owner account's key since the "
                    "last note, past what one address may bring (%d at once, as many an "
                    "hour: --new-anonymous-nodes-per-address); the latest from %s",
                    self._unlogged,
                    cfg.new_anonymous_nodes,
                    address,
                )
                self._logged_at, self._unlogged = now, 0
            return max((1.0 - tokens) * 3600.0 / self.burst, cfg.min_wait)
        self.buckets.pop(address, None)  # most recent last
        if len(self.buckets) >= cfg.max_addresses:
            for key in [a for a in self.buckets if self._tokens(a, now) >= self.burst]:
                del self.buckets[key]
            if len(self.buckets) >= cfg.max_addresses:
                for key in list(self.buckets)[: len(self.buckets) // 2 + 1]:
                    del self.buckets[key]
        self.buckets[address] = (tokens - 1.0, now)
        return 0.0

    def _tokens(self, address: str, now: float) -> float:
        tokens, updated = self.buckets.get(address, (self.burst, now))
        return min(self.burst, tokens + max(0.0, now - updated) * self.burst / 3600.0)
