"""A coordinator app connected to a queue sink, for tests of group commits; and Commits,
which runs calls in an app's group commits from synchronous code (the settlement model)."""

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from sparegrid.coordinator.app import App
from sparegrid.coordinator.domain import Device, Node
from sparegrid.coordinator.errors import CoordinatorError
from sparegrid.coordinator.rpc.worker import QueueSink
from sparegrid.wire import Signer

T = TypeVar("T")


def connected(app: App) -> QueueSink:
    signer = Signer.generate()
    node = Node(
        signer.node_id,
        signer.public_key,
        "n1",
        [Device(0, "cpu", "cpu", memory_bytes=1 << 30)],
        executors={"echo": "1"},
        owner="volunteer",
    )
    sink = QueueSink(app.unflushed)
    app.sinks.add(sink)
    app.store.upsert_node(node)
    app.scheduler.connect(node, sink, [])
    app.scheduler.grant(node.id, 0, 10)
    return sink


class Commits:
    """Runs calls in the group commits of an app (the one last attached), as servicers do,
    on an event loop of its own; records why each group commit that failed failed."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.app: App | None = None
        self.failed: list[Exception] = []
        self.dispatched = False  # the last group commit ended with a dispatch pass

    def attach(self, app: App) -> None:
        failed_commit = app._failed_commit

        def failing(exc: Exception, futures: list["asyncio.Future[Any]"]) -> None:
            self.failed.append(exc)
            failed_commit(exc, futures)

        app._failed_commit = failing  # type: ignore[method-assign]
        self.app = app

    def call(self, fn: Callable[[], T], kick: bool = False) -> T:
        """`fn`'s value once its group commit is durable; `kick`: a dispatch pass follows
        in the same commit, as after each message of a worker."""
        app = self.app
        assert app is not None

        async def called() -> T:
            future = app.call(fn)
            if kick:
                app.kick()
            return await future

        value = self.run(called())
        self.dispatched = kick
        return value

    def call_all(self, fns: list[Callable[[], T]], kick: bool = False) -> list[T]:
        """Their values once their group commit (one: they arrive in one turn of the event
        loop, as several workers' messages may) is durable."""
        app = self.app
        assert app is not None

        async def called() -> list[T]:
            futures = [app.call(fn) for fn in fns]
            if kick:
                app.kick()
            return list(await asyncio.gather(*futures))

        values = self.run(called())
        self.dispatched = kick
        return values

    def run(self, work: Awaitable[T]) -> T:
        """Runs a coroutine of the app (a submit) on the loop."""
        self.dispatched = False
        try:
            return self.loop.run_until_complete(work)
        except CoordinatorError:
            self.check()  # a failed commit's error names the cause it hid
            raise

    def check(self) -> None:
        """Every group commit so far succeeded: none failed, reloading memory."""
        assert not self.failed, (
            f"a group commit failed, every session closed and memory reloaded: {self.failed[0]!r}"
        )

    def close(self) -> None:
        """Cancels what still runs on the loop (a retry a failure cut short) and closes it."""

        async def cancelled() -> None:
            left = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in left:
                task.cancel()
            await asyncio.gather(*left, return_exceptions=True)

        self.loop.run_until_complete(cancelled())
        self.loop.run_until_complete(self.loop.shutdown_default_executor())
        self.loop.close()
