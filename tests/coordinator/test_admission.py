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
