"""Admission control on a fake clock: a burst, then the rate; refused ones told when."""

import logging

import pytest

from sparegrid.coordinator.clock import FakeClock
from sparegrid.coordinator.services.admission import Admission, AdmissionConfig


def test_a_burst_then_the_rate_and_hints_that_spread_the_rest_out() -> None:
    clock = FakeClock()
    admission = Admission(clock, AdmissionConfig(rate=10.0, burst=3, min_wait=0.0))
    assert [admission.admit() for _ in range(3)] == [0.0, 0.0, 0.0]
    hints = [admission.admit() for _ in range(5)]
    # each refused one gets a later place in line, 1/rate apart
    assert hints == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5])
    clock.advance(0.1001)  # one token back
    assert admission.admit() == 0.0
    assert admission.admit() > 0
    assert (admission.admitted, admission.refused) == (4, 6)


def test_no_hint_is_shorter_than_the_floor() -> None:
    admission = Admission(FakeClock(), AdmissionConfig(rate=1000.0, burst=1, min_wait=0.5))
    admission.admit()
    assert admission.admit() == 0.5


def test_no_limit_admits_everyone() -> None:
    admission = Admission(FakeClock(), AdmissionConfig(rate=0.0, burst=0))
    assert all(admission.admit() == 0.0 for _ in range(10_000))


def test_refusals_are_logged_at_most_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    admission = Admission(clock, AdmissionConfig(rate=1.0, burst=1, log_every=5.0))
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
