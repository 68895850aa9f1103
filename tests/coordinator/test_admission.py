"""Admission control on a fake clock: a burst, then the rate; a turn that comes soon is
waited for, later ones are refused and told when to come back."""

import logging

import pytest

from sparegrid.coordinator.clock import FakeClock
from sparegrid.coordinator.services.admission import Admission, AdmissionConfig, Decision


def test_a_burst_then_the_rate_and_hints_that_spread_the_rest_out() -> None:
    clock = FakeClock()
    admission = Admission(clock, AdmissionConfig(rate=10.0, burst=3, hold=0.0, min_wait=0.0))
    assert [admission.admit() for _ in range(3)] == [Decision(True, 0.0)] * 3
    refusals = [admission.admit() for _ in range(5)]
    assert not any(admitted for admitted, _ in refusals)
    # each refused one gets a later place in line, 1/rate apart
    assert [hint for _, hint in refusals] == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5])
    clock.advance(0.1001)  # one token back
    assert admission.admit() == Decision(True, 0.0)
    assert not admission.admit().admitted
    assert (admission.admitted, admission.refused) == (4, 6)


def test_a_turn_within_the_hold_is_waited_for_instead_of_refused() -> None:
    clock = FakeClock()
    config = AdmissionConfig(rate=10.0, burst=2, hold=0.5, tick=0.0, min_wait=0.0)
    admission = Admission(clock, config)
    assert [admission.admit() for _ in range(2)] == [Decision(True, 0.0)] * 2
    waits = [admission.admit() for _ in range(5)]
    # the next five tokens come within half a second: each waits for its own, in order
    assert all(admitted for admitted, _ in waits)
    assert [wait for _, wait in waits] == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5])
    refused, hint = admission.admit()
    assert not refused and hint == pytest.approx(0.1)  # its turn is 0.6 s away
    clock.advance(hint)  # back when told: its turn now falls within the hold
    assert admission.admit() == Decision(True, pytest.approx(0.5))
    assert (admission.admitted, admission.waited, admission.refused) == (8, 6, 1)


def test_refused_ones_told_to_come_back_all_get_a_place() -> None:
    """A storm of 100 against 10 a second, a burst of 10 and a line of 2 s: each refused
    one that comes back when told is admitted, and the last one's turn is ~9 s away."""
    clock = FakeClock()
    config = AdmissionConfig(rate=10.0, burst=10, hold=2.0, tick=0.0, min_wait=0.0)
    admission = Admission(clock, config)
    decisions = [admission.admit() for _ in range(100)]
    refused = sorted(wait for admitted, wait in decisions if not admitted)
    assert len(refused) == 100 - 10 - 20
    elapsed, turns = 0.0, []
    for hint in refused:
        clock.advance(hint - elapsed)
        elapsed = hint
        admitted, wait = admission.admit()
        assert admitted and wait <= 2.0 + 1e-6
        turns.append(hint + wait)
    assert max(turns) == pytest.approx(9.0, abs=0.05)  # 90 after the burst, at 10 a second


def test_waits_end_on_a_tick_so_that_those_admitted_together_go_together() -> None:
    """100 a second, a tick of 0.1 s: the ten turns within each tick go at its end (one
    group commit for them all), none before its token."""
    clock = FakeClock(start=1000.0)
    clock.advance(0.03)  # off the tick
    admission = Admission(clock, AdmissionConfig(rate=100.0, burst=1, hold=1.0, tick=0.1))
    assert admission.admit() == Decision(True, 0.0)  # the burst: at once, not on a tick
    waits = [admission.admit().wait for _ in range(25)]
    ends = [round(clock.now() + wait, 6) for wait in waits]
    assert sorted(set(ends)) == [1000.1, 1000.2, 1000.3]
    assert [ends.count(end) for end in (1000.1, 1000.2, 1000.3)] == [7, 10, 8]
    turns = [(i + 1) / 100 for i in range(25)]  # when each one's token is there
    assert all(wait >= turn - 1e-9 for wait, turn in zip(waits, turns, strict=True))


def test_no_hint_is_shorter_than_the_floor() -> None:
    admission = Admission(
        FakeClock(), AdmissionConfig(rate=1000.0, burst=1, hold=0.0, min_wait=0.5)
    )
    admission.admit()
    assert admission.admit() == Decision(False, 0.5)


def test_no_limit_admits_everyone() -> None:
    admission = Admission(FakeClock(), AdmissionConfig(rate=0.0, burst=0))
    assert all(admission.admit() == Decision(True, 0.0) for _ in range(10_000))


def test_refusals_are_logged_at_most_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    admission = Admission(clock, AdmissionConfig(rate=1.0, burst=1, hold=0.0, log_every=5.0))
    with caplog.at_level(logging.WARNING, logger="sparegrid.coordinator.admission"):
        for _ in range(1000):
            admission.admit()
        clock.advance(6)
        for _ in range(10):
            admission.admit()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert "refused 1 registration(s)" in lines[0]
    assert "refused 999 registration(s)" in lines[1]  # all the refusals between the two


def test_a_flood_of_refusals_does_not_push_the_hint_past_the_longest_wait() -> None:
    """Callers refused and never back (a flood) hold no place past `max_wait`: an honest
    worker refused during the flood is told at most that, and gets in when it comes back."""
    clock = FakeClock()
    config = AdmissionConfig(rate=10.0, burst=10, hold=2.0, tick=0.0, max_wait=20.0)
    admission = Admission(clock, config)
    for _ in range(60):  # a minute of 1,500 registrations a second
        hints = [admission.admit().wait for _ in range(1500)]
        assert max(hints) <= config.max_wait
        clock.advance(1.0)
    assert admission.refused > 88_000  # 2.5 hours of turns at 10 a second
    for _ in range(1500):
        admission.admit()
    admitted, hint = admission.admit()  # an honest one, during the flood
    assert not admitted and hint <= config.max_wait
    clock.advance(hint)  # the flood stopped; the honest one comes back when told
    admitted, wait = admission.admit()
    assert admitted and wait <= config.hold


def test_one_address_flooding_does_not_starve_the_others() -> None:
    """One address sends 1,000 registrations every 0.1 s; meanwhile 40 workers a second
    from other addresses get in on their first try, and the flood gets its share only."""

    def run(share: float) -> tuple[int, int]:
        clock = FakeClock()
        config = AdmissionConfig(rate=100.0, burst=100, hold=1.0, share=share)
        admission = Admission(clock, config)
        flood = honest_admitted = 0
        for step in range(100):  # ten seconds
            flood += sum(admission.admit("203.0.113.9").admitted for _ in range(1000))
            for i in range(4):
                honest_admitted += admission.admit(f"198.51.100.{(step * 4 + i) % 250}").admitted
            clock.advance(0.1)
        return flood, honest_admitted

    flood, honest = run(share=0.2)
    assert honest == 400  # every one of them, at once or after a wait within the hold
    assert flood <= 0.2 * (100 + 100 * 10) + 1  # its share of the burst and of the rate
    flood, honest = run(share=1.0)  # no share per address: the flood takes the turns
    assert honest < 40


def test_a_refusal_past_the_share_takes_no_place_in_line() -> None:
    clock = FakeClock()
    config = AdmissionConfig(rate=10.0, burst=10, hold=0.0, tick=0.0, min_wait=0.0, share=0.2)
    admission = Admission(clock, config)
    assert [admission.admit("192.0.2.1").admitted for _ in range(3)] == [True, True, False]
    refused, hint = admission.admit("192.0.2.1")
    assert not refused and hint == pytest.approx(0.5)  # its own next token: 2 a second
    assert admission.refused_share == 2
    # others still have the burst, and the line is empty: the eighth is the first refused
    others = [admission.admit(f"192.0.2.{i}") for i in range(2, 11)]
    assert [d.admitted for d in others] == [True] * 8 + [False]
    assert others[-1].wait == pytest.approx(0.1)  # the first place in line


def test_loopback_and_unnamed_callers_have_no_share() -> None:
    """A fleet run on one host (bench/fleetsim.py) registers at the whole rate."""
    for address in ("127.0.0.1", "::1", ""):
        admission = Admission(FakeClock(), AdmissionConfig(rate=100.0, burst=100, share=0.1))
        assert all(admission.admit(address).admitted for _ in range(100))
    admission = Admission(
        FakeClock(), AdmissionConfig(rate=100.0, burst=100, share=0.1, exempt_loopback=False)
    )
    assert sum(admission.admit("127.0.0.1").admitted for _ in range(100)) == 10


def test_addresses_remembered_are_bounded() -> None:
    clock = FakeClock()
    admission = Admission(clock, AdmissionConfig(rate=1000.0, burst=1000, max_addresses=100))
    for i in range(1000):
        admission.admit(f"10.0.{i // 250}.{i % 250}")
        clock.advance(0.001)
    assert len(admission._addresses) <= 100
