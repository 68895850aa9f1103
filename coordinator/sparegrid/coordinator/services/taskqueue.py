"""A job's queue of tasks waiting for a node, cheap for a job of a million tasks.

Tasks that ran before (a retry, a result waiting for its check) are kept as Task objects.
The tasks of a large job that never ran are kept as ranges of task indexes and read from
the store a slice at a time when a dispatch takes them: a fresh job costs a few bytes
whatever its size, and the coordinator never holds millions of objects for the garbage
collector to walk. A task with results held for comparison is never inside a range.
"""

import itertools
from collections import deque
from collections.abc import Callable, Iterator

from sparegrid.coordinator.domain import Task

# (first index, how many): the job's tasks from that index on, in index order
Reader = Callable[[int, int], list[Task]]
# Tasks read from the store at least at a time: on PostgreSQL each read waits a round trip
# inside the group commit (256 tasks: about 1 ms of reading, a few hundred KiB held).
READ_SLICE = 256
_versions = itertools.count(1)


class TaskQueue:
    def __init__(
        self,
        tasks: list[Task] | None = None,
        unread: list[range] | None = None,
        read: Reader | None = None,
    ) -> None:
        """`tasks` first, then the tasks whose indexes are in `unread`, read by `read`."""
        self._order: deque[str | range] = deque(t.id for t in tasks or ())
        self._tasks: dict[str, Task] = {t.id: t for t in tasks or ()}
        ranges = [r for r in unread or () if r]
        if ranges and read is None:
            raise ValueError("a queue with unread tasks needs a way to read them")
        self._order.extend(ranges)
        self._read = read
        self._unread = sum(len(r) for r in ranges)
        # changes whenever tasks join the queue (or a new queue is made): what dispatch
        # looks at to know whether idle nodes are worth another look
        self.version = next(_versions)

    def __len__(self) -> int:
        return len(self._tasks) + self._unread

    def __bool__(self) -> bool:
        return len(self) > 0

    def __contains__(self, task_id: str) -> bool:
        return task_id in self._tasks

    def materialised(self) -> Iterator[Task]:
        """The tasks kept as objects, in queue order: every task that ran before; the
        unread ones of a large job (never run, no results held) are not among them."""
        for item in self._order:
            if isinstance(item, str) and item in self._tasks:
                yield self._tasks[item]

    def appendleft(self, task: Task) -> None:
        """Puts a task at the front (it goes next)."""
        self._drop(task.id)
        self._tasks[task.id] = task
        self._order.appendleft(task.id)
        self.version = next(_versions)

    def append(self, task: Task) -> None:
        self._drop(task.id)
        self._tasks[task.id] = task
        self._order.append(task.id)
        self.version = next(_versions)

    def remove(self, task_id: str) -> Task | None:
        """Takes a task out wherever it is; None when it is not kept as an object."""
        return self._tasks.pop(task_id, None)  # its id in _order is skipped when reached

    def take(self, count: int, skip: Callable[[Task], bool] | None = None) -> list[Task]:
        """Up to `count` tasks from the front, in order, leaving those `skip` refuses where
        they were."""
        taken: list[Task] = []
        skipped: list[Task] = []
        while len(taken) < count and self:
            task = self._popleft(count - len(taken))
            if skip is not None and skip(task):
                skipped.append(task)
            else:
                taken.append(task)
        for task in reversed(skipped):
            self.appendleft(task)
        return taken

    def drop(self, count: int) -> int:
        """Forgets up to `count` tasks from the front without reading any (a job that
        ended); returns how many."""
        dropped = 0
        while dropped < count and self._order:
            item = self._order.popleft()
            if isinstance(item, range):
                part = min(len(item), count - dropped)
                if part < len(item):
                    self._order.appendleft(item[part:])
                self._unread -= part
                dropped += part
            elif self._tasks.pop(item, None) is not None:
                dropped += 1
        return dropped

    def _popleft(self, wanted: int) -> Task:
        while True:
            item = self._order.popleft()
            if isinstance(item, str):
                task = self._tasks.pop(item, None)
                if task is not None:
                    return task
                continue  # removed earlier
            self._read_front(item, wanted)

    def _read_front(self, unread: range, wanted: int) -> None:
        """Reads the first `wanted` tasks of a range (at least READ_SLICE, to read in
        slices) and puts them at the front as objects."""
        assert self._read is not None
        part = unread[: max(wanted, READ_SLICE)]
        if len(part) < len(unread):
            self._order.appendleft(unread[len(part) :])
        self._unread -= len(part)
        tasks = self._read(part.start, len(part))
        for task in reversed(tasks):
            self._tasks[task.id] = task
            self._order.appendleft(task.id)

    def _drop(self, task_id: str) -> None:
        """Forgets an earlier place of a task about to be queued again."""
        self._tasks.pop(task_id, None)
