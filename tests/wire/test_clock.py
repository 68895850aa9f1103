"""The one clock: the fake moves only when told, and local time follows its wall time."""

from datetime import datetime

from sparegrid.wire.clock import FakeClock, SystemClock, local_time


async def test_the_fake_clock_moves_only_when_told_or_slept_on() -> None:
    clock = FakeClock(datetime(2026, 11, 30, 12, 0))
    start_mono, start_wall = clock.monotonic(), clock.now()
    assert local_time(clock) == datetime(2026, 11, 30, 12, 0)
    await clock.sleep(90)
    assert clock.monotonic() - start_mono == 90 and clock.now() - start_wall == 90
    assert local_time(clock) == datetime(2026, 11, 30, 12, 1, 30)
    clock.set_wall(datetime(2026, 11, 30, 21, 55))  # a clock change: intervals stay put
    assert clock.monotonic() - start_mono == 90
    assert local_time(clock) == datetime(2026, 11, 30, 21, 55)


def test_the_system_clock_reads_real_time() -> None:
    clock = SystemClock()
    assert abs(clock.now() - datetime.now().timestamp()) < 5
    assert clock.monotonic() <= SystemClock().monotonic()
