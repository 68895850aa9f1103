"""A job's queue: objects for tasks that ran before, ranges read from the store for the
rest; and a large job through the scheduler, its tasks read only as they are leased."""

from pathlib import Path

from sparegrid.coordinator.app import App
from sparegrid.coordinator.clock import FakeClock
from sparegrid.coordinator.domain import Task, TaskState
from sparegrid.coordinator.kinds import encode_params
from sparegrid.coordinator.services.jobs import Draft, JobSpec
from sparegrid.coordinator.services.taskqueue import READ_SLICE, TaskQueue
from sparegrid.coordinator.settings import Settings
from sparegrid.coordinator.store.memory import MemoryStore
from tests.coordinator.helpers import NO_CHECKS, FakeNode


def task(index: int) -> Task:
    return Task(f"j-{index}", "j", index, b"", [])


class Reads:
    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def __call__(self, start: int, count: int) -> list[Task]:
        self.calls.append((start, count))
        return [task(i) for i in range(start, start + count)]


def test_ranges_are_read_in_slices_only_when_taken() -> None:
    reads = Reads()
    queue = TaskQueue([task(100)], [range(0, 1000)], reads)
    assert len(queue) == 1001 and reads.calls == []
    assert [t.index for t in queue.take(3)] == [100, 0, 1]
    assert reads.calls == [(0, READ_SLICE)]  # one read for a slice, not three
    assert len(queue) == 998
    assert [t.index for t in queue.take(600)][:3] == [2, 3, 4]
    assert reads.calls[-1] == (READ_SLICE, 600 - (READ_SLICE - 2))  # what was read ahead first
    assert len(queue) == 398


def test_skipped_tasks_stay_at_the_front_in_order() -> None:
    queue = TaskQueue([task(i) for i in range(5)])
    taken = queue.take(2, skip=lambda t: t.index in (0, 2))
    assert [t.index for t in taken] == [1, 3]
    assert [t.index for t in queue.materialised()] == [0, 2, 4]


def test_requeue_remove_and_drop() -> None:
    reads = Reads()
    queue = TaskQueue([], [range(10, 20)], reads)
    first = queue.take(1)[0]
    queue.appendleft(first)  # back at the front, once
    queue.appendleft(first)
    assert len(queue) == 10 and first.id in queue
    assert queue.remove(first.id) is first and first.id not in queue
    assert queue.remove("missing") is None
    assert len(queue) == 9
    assert queue.drop(5) == 5 and len(queue) == 4
    assert [t.index for t in queue.take(10)] == [16, 17, 18, 19]
    assert not queue


def test_a_large_job_reads_its_tasks_from_the_store_as_nodes_take_them(tmp_path: Path) -> None:
    store = MemoryStore()
    app = App(store, Settings(data_dir=tmp_path, bulk_above=10, trust=NO_CHECKS), FakeClock())
    app.start_services()
    alice, _ = app.accounts.create("alice", 1000)
    draft = app.jobs.prepare(alice, JobSpec("echo", params=b'{"tasks": 200}'))
    assert isinstance(draft, Draft)
    planned = app.jobs.plan(draft)
    app.jobs.begin(planned)
    store.add_tasks(planned.tasks())
    job = app.jobs.publish(planned)
    active = app.scheduler.jobs[job.id]
    assert len(active.queue) == 200 and list(active.queue.materialised()) == []
    node = FakeNode(app, "n1")
    node.connect(credit=5)
    items = node.sink.take()
    assert [t.index for _, t, _ in items] == [0, 1, 2, 3]  # a new node's window
    assert {t.params for _, t, _ in items} == {encode_params({"data": "", "sleep_ms": 0})}
    node.answer(items)
    assert app.jobs.counts(job)[TaskState.SUCCEEDED] == 4
    assert app.jobs.counts(job)[TaskState.QUEUED] + app.jobs.counts(job)[TaskState.LEASED] == 196
