"""The node keys never seen before one address may bring without an owner account's key,
on a fake clock: a burst (a lab behind one NAT address registering at once), then as many
an hour; loopback exempt; the buckets kept bounded against a caller rotating addresses."""

import pytest

from sparegrid.coordinator.clock import FakeClock
from sparegrid.coordinator.rpc.auth import peer_address
from sparegrid.coordinator.services.admission import Admission, AdmissionConfig, NewNodes


def test_a_lab_registers_at_once_then_new_keys_come_at_the_hourly_rate() -> None:
    clock = FakeClock()
    new_nodes = Admission(clock, AdmissionConfig()).new_nodes
    assert all(new_nodes.take("203.0.113.9") == 0 for _ in range(1000))  # the default: 1,000
    hint = new_nodes.take("203.0.113.9")
    assert hint == pytest.approx(3.6)  # 1,000 an hour: one every 3.6 s
    assert new_nodes.take("198.51.100.1") == 0  # another address has its own
    clock.advance(hint)
    assert new_nodes.take("203.0.113.9") == 0
    assert new_nodes.take("203.0.113.9") > 0
    clock.advance(3600)  # an hour idle: the whole burst again
    assert all(new_nodes.take("203.0.113.9") == 0 for _ in range(1000))
    assert new_nodes.take("203.0.113.9") > 0
    assert new_nodes.refused == 3


def test_one_ipv6_64_is_one_address() -> None:
    new_nodes = NewNodes(FakeClock(), AdmissionConfig(new_anonymous_nodes=2))
    same = [peer_address(f"ipv6:[2001:db8:0:1::{i}]:5000") for i in (1, 2, 3)]
    assert [new_nodes.take(a) for a in same][:2] == [0, 0]
    assert new_nodes.take(same[2]) > 0  # a third host of the same /64
    assert new_nodes.take(peer_address("ipv6:[2001:db8:0:2::1]:5000")) == 0


def test_loopback_and_no_limit_are_not_counted() -> None:
    for address in ("127.0.0.1", "::1", ""):
        new_nodes = NewNodes(FakeClock(), AdmissionConfig(new_anonymous_nodes=1))
        assert all(new_nodes.take(address) == 0 for _ in range(10))
    new_nodes = NewNodes(FakeClock(), AdmissionConfig(new_anonymous_nodes=0))
    assert all(new_nodes.take("203.0.113.9") == 0 for _ in range(10_000))
    counted = NewNodes(FakeClock(), AdmissionConfig(new_anonymous_nodes=1, exempt_loopback=False))
    assert [counted.take("127.0.0.1") == 0 for _ in range(2)] == [True, False]


def test_buckets_kept_are_bounded_and_full_ones_go_first() -> None:
    """A caller rotating through 100,000 addresses keeps at most `max_addresses` buckets;
    an address that spent its keys is kept while buckets that filled up again go."""
    clock = FakeClock()
    new_nodes = NewNodes(clock, AdmissionConfig(new_anonymous_nodes=2, max_addresses=100))
    assert [new_nodes.take("203.0.113.9") == 0 for _ in range(3)] == [True, True, False]
    for i in range(99):  # each takes one of its two: full again in half an hour
        new_nodes.take(f"10.0.0.{i}")
    assert len(new_nodes.buckets) == 100
    clock.advance(1800)  # 203.0.113.9 has one of its two back, not both
    new_nodes.take("198.51.100.1")
    assert set(new_nodes.buckets) == {"203.0.113.9", "198.51.100.1"}
    for i in range(100_000):
        new_nodes.take(f"10.{1 + i // 62500}.{i // 250 % 250}.{i % 250}")
        assert len(new_nodes.buckets) <= 100


def test_refusals_are_logged_at_most_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    new_nodes = NewNodes(clock, AdmissionConfig(new_anonymous_nodes=1, log_every=5.0))
    new_nodes.take("203.0.113.9")
    for _ in range(4):  # ten refusals at 0, 2, 4 and 6 s
        for _ in range(10):
            new_nodes.take("203.0.113.9")
        clock.advance(2.0)
    notes = [r.getMessage() for r in caplog.records if "new node key" in r.getMessage()]
    assert len(notes) == 2  # at 0 s and at 6 s
    assert "refused 1 new node key(s)" in notes[0] and "refused 30 " in notes[1]
    assert "--new-anonymous-nodes-per-address" in notes[0] and "203.0.113.9" in notes[0]
