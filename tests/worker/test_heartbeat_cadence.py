"""The worker's heartbeat cadence: each interval while it holds a task, the idle interval
while it holds none, and what a coordinator that names no idle interval gets."""

from sparegrid.v1 import worker_pb2
from sparegrid.worker.upstream.heartbeat import DEFAULT, Cadence


def welcome(busy_ms: int, idle_ms: int = 0) -> worker_pb2.Welcome:
    message = worker_pb2.Welcome()
    message.heartbeat_interval.FromMilliseconds(busy_ms)
    if idle_ms:
        message.idle_heartbeat_interval.FromMilliseconds(idle_ms)
    return message


def sent_at(cadence: Cadence, holding: list[bool]) -> list[float]:
    """The ticks (every `busy` seconds, a little late) at which a heartbeat goes out."""
    return [
        tick * cadence.busy
        for tick, held in enumerate(holding, start=1)
        if cadence.due(held, tick * cadence.busy + 0.003)
    ]


def test_idle_ticks_send_once_per_idle_interval_and_busy_ticks_every_time() -> None:
    cadence = Cadence.asked(welcome(10_000, 60_000), None, now=0.0)
    assert (cadence.busy, cadence.idle) == (10.0, 60.0)
    idle_then_busy = [False] * 13 + [True] * 3 + [False] * 7
    assert sent_at(cadence, idle_then_busy) == [60, 120, 140, 150, 160, 220]


def test_a_coordinator_that_names_no_idle_interval_gets_every_tick() -> None:
    cadence = Cadence.asked(welcome(10_000), None, now=0.0)
    assert (cadence.busy, cadence.idle) == (10.0, 10.0)
    assert sent_at(cadence, [False] * 3) == [10, 20, 30]
    assert Cadence.asked(worker_pb2.Welcome(), None, now=0.0).busy == DEFAULT


def test_the_workers_own_interval_replaces_both_and_idle_is_never_faster() -> None:
    assert (c := Cadence.asked(welcome(10_000, 60_000), 3.0, now=0.0)).idle == c.busy == 3.0
    assert Cadence(busy=10.0, idle=5.0, now=0.0).idle == 10.0


def test_a_coordinator_asking_for_no_interval_at_all_cannot_make_the_worker_spin() -> None:
    hostile = worker_pb2.Welcome()
    hostile.heartbeat_interval.FromMilliseconds(-5000)
    assert Cadence.asked(hostile, None, now=0.0).busy >= 0.01
