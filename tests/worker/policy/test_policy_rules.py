"""Each policy rule on synthetic device readings and a fake clock: no GPU, no waiting."""

from datetime import datetime

import pytest

from sparegrid.wire.clock import FakeClock
from sparegrid.worker.policy import (
    DevicePolicy,
    DeviceState,
    GpuProcess,
    Mode,
    PolicySettings,
    parse_windows,
)
from sparegrid.worker.policy.rules import MiB

OURS = {4242}
GiB = 1 << 30


def is_ours(pid: int) -> bool:
    return pid in OURS


class Harness:
    """One device's policy, fed readings at fake-clock times."""

    def __init__(self, **settings: object) -> None:
        self.clock = FakeClock()
        self.policy = DevicePolicy(0, PolicySettings(**settings))  # type: ignore[arg-type]

    def see(
        self,
        state: DeviceState | None = None,
        running: bool = False,
        window_left: float = float("inf"),
    ) -> Mode:
        decision = self.policy.evaluate(
            state or DeviceState(0), is_ours, running, self.clock.monotonic(), window_left
        )
        return decision.mode


def idle(**fields: object) -> DeviceState:
    base: dict[str, object] = {
        "utilization": 0.0,
        "memory_used": GiB // 2,
        "memory_total": 80 * GiB,
    }
    base.update(fields)
    return DeviceState(0, **base)  # type: ignore[arg-type]


def test_work_starts_only_after_the_gpu_was_idle_for_the_hysteresis_time() -> None:
    h = Harness(idle_seconds=60)
    assert h.see(idle()) is Mode.WAITING
    h.clock.advance(59)
    assert h.see(idle()) is Mode.WAITING
    h.clock.advance(1)
    assert h.see(idle()) is Mode.READY


def test_another_process_on_the_gpu_is_the_owner_and_restarts_the_idle_timer() -> None:
    h = Harness(idle_seconds=30)
    h.see(idle())
    h.clock.advance(30)
    assert h.see(idle()) is Mode.READY
    game = GpuProcess(999, 2 * GiB, "graphics")
    assert h.see(idle(processes=(game,))) is Mode.OWNER_ACTIVE
    h.clock.advance(20)
    assert h.see(idle()) is Mode.WAITING  # the owner left; the timer started again
    h.clock.advance(29)
    assert h.see(idle()) is Mode.WAITING
    h.clock.advance(1)
    assert h.see(idle()) is Mode.READY


def test_our_own_processes_do_not_count_as_the_owner() -> None:
    h = Harness(idle_seconds=0)
    ours = GpuProcess(4242, 10 * GiB)
    assert h.see(idle(processes=(ours,), utilization=100.0), running=True) is Mode.READY


def test_utilization_counts_only_while_none_of_our_tasks_runs() -> None:
    h = Harness(idle_seconds=0, max_utilization=10)
    assert h.see(idle(utilization=35.0)) is Mode.OWNER_ACTIVE
    assert h.see(idle(utilization=5.0)) is Mode.READY
    # busy while our task runs: that is our work
    assert h.see(idle(utilization=99.0), running=True) is Mode.READY


def test_memory_used_by_processes_we_cannot_see_is_the_owner() -> None:
    # e.g. inside a container, where NVML lists no processes of other containers
    h = Harness(idle_seconds=0, max_other_memory=256 * MiB)
    assert h.see(idle(memory_used=GiB // 2)) is Mode.READY  # the baseline: driver reserve
    assert h.see(idle(memory_used=GiB // 2 + 200 * MiB)) is Mode.READY
    assert h.see(idle(memory_used=GiB // 2 + 300 * MiB)) is Mode.OWNER_ACTIVE


def test_memory_of_our_own_process_is_not_counted_as_others() -> None:
    h = Harness(idle_seconds=0)
    h.see(idle())
    ours = GpuProcess(4242, 20 * GiB)
    state = idle(memory_used=GiB // 2 + 20 * GiB, processes=(ours,))
    assert h.see(state, running=True) is Mode.READY


def test_temperature_pauses_at_the_limit_and_resumes_below_the_hysteresis() -> None:
    h = Harness(idle_seconds=0, max_temp=80, temp_hysteresis=10)
    assert h.see(idle(temperature=79.0)) is Mode.READY
    assert h.see(idle(temperature=80.0)) is Mode.TOO_HOT
    assert h.see(idle(temperature=75.0)) is Mode.TOO_HOT  # cooling, not cool enough
    assert h.see(idle(temperature=70.0)) is Mode.READY


def test_power_above_the_cap_pauses_until_well_below_it() -> None:
    h = Harness(idle_seconds=0, power_cap=200, power_hysteresis=0.1)
    assert h.see(idle(power=199.0)) is Mode.READY
    assert h.see(idle(power=230.0)) is Mode.POWER
    assert h.see(idle(power=190.0)) is Mode.POWER
    assert h.see(idle(power=180.0)) is Mode.READY


def test_disabled_device_never_works() -> None:
    h = Harness(idle_seconds=0, enabled=frozenset({1, 2}))
    assert h.see(idle()) is Mode.DISABLED


def test_closed_window_comes_first() -> None:
    h = Harness(idle_seconds=0)
    assert h.see(idle(), window_left=0) is Mode.OUTSIDE_WINDOW
    assert h.see(idle(), window_left=3600) is Mode.READY


def test_a_failed_reading_is_treated_as_busy() -> None:
    h = Harness(idle_seconds=10)
    h.see(idle())
    h.clock.advance(10)
    assert h.see(DeviceState(0, error="NVML could not read the GPU")) is Mode.UNREADABLE
    assert h.see(idle()) is Mode.WAITING  # and the owner-away timer starts over


def test_our_task_over_its_vram_share_is_flagged() -> None:
    h = Harness(idle_seconds=0, max_vram=0.5)
    small, big = GpuProcess(4242, 30 * GiB), GpuProcess(4242, 50 * GiB)
    ok = h.policy.evaluate(idle(processes=(small,)), is_ours, True, 0.0, float("inf"))
    over = h.policy.evaluate(idle(processes=(big,)), is_ours, True, 0.0, float("inf"))
    assert (ok.over_vram, over.over_vram) == (False, True)
    assert over.may_work  # the device is fine; only that task must go


def test_unknown_fields_skip_their_rules() -> None:
    h = Harness(idle_seconds=0, max_temp=60, power_cap=100)
    assert h.see(DeviceState(0)) is Mode.READY


@pytest.mark.parametrize(
    ("windows", "when", "left"),
    [
        (["mon-fri 22:00-07:00"], datetime(2026, 11, 30, 23, 0), 8 * 3600),  # Monday night
        (["mon-fri 22:00-07:00"], datetime(2026, 11, 30, 12, 0), 0),  # Monday noon
        (["mon-fri 22:00-07:00"], datetime(2026, 12, 5, 6, 0), 3600),  # Saturday 6:00, Fri's night
        (["sat-sun"], datetime(2026, 12, 5, 12, 0), 36 * 3600),  # until Monday 00:00
        (["fri 22:00-24:00", "sat-sun"], datetime(2026, 12, 4, 23, 0), 49 * 3600),  # merged
        (["00:00-24:00"], datetime(2026, 12, 4, 23, 0), float("inf")),  # every day, all day
    ],
)
def test_time_windows(windows: list[str], when: datetime, left: float) -> None:
    assert parse_windows(windows).seconds_left(when) == left


def test_seconds_until_a_window_opens() -> None:
    windows = parse_windows(["mon-fri 22:00-07:00"])
    assert windows.seconds_until_open(datetime(2026, 11, 30, 21, 0)) == 3600
    assert windows.seconds_until_open(datetime(2026, 11, 30, 23, 0)) == 0
    assert parse_windows([]).seconds_left(datetime(2026, 11, 30)) == float("inf")
