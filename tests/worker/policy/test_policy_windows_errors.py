"""Time windows written wrongly are refused with a message that says how to write them."""

import pytest

from sparegrid.worker.policy import WindowError, parse_windows


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "write DAYS"),
        ("someday", "days are mon"),
        ("mon-fri 25:00-07:00", "hours are 00-24"),
        ("mon-fri 22:00-07:60", "minutes 00-59"),
        ("mon-fri 10-12", "not a time range"),
        ("mon tue wed", "write DAYS"),
        ("mon noon", "not a time range"),
        ("24:30-01:00", "24:MM is only valid as 24:00"),
    ],
)
def test_bad_windows(text: str, says: str) -> None:
    with pytest.raises(WindowError, match=says) as caught:
        parse_windows([text])
    assert repr(text) in str(caught.value)


def test_day_ranges_wrap_around_the_week() -> None:
    [window] = parse_windows(["sat-mon"]).windows
    assert window.days == frozenset({5, 6, 0})
    [window] = parse_windows(["mon,wed,fri 09:00-17:00"]).windows
    assert window.days == frozenset({0, 2, 4})
