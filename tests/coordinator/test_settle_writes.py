"""A batch of results is settled with one write per table, not one per result: what a
result adds is rows, not statements (each a round trip to PostgreSQL). Payments, tasks,
attempts and reputations come out as they did when each result wrote its own."""

from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from sparegrid.coordinator.domain import TaskState, node_account
from tests.coordinator.helpers import FakeNode, echo, make_app, make_client

WRITES = (
    "add_replicas",
    "update_replicas",
    "update_attempts",
    "update_tasks",
    "post_many",
    "add_blob_owners",
    "put_reputations",
    "update_job",
)


def test_a_batch_of_results_writes_each_table_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = make_app(tmp_path)
    alice = make_client(app, credit=10_000)
    job_id = echo(app, alice, 41)  # one more than the batch: the job does not end in it
    app.scheduler.config.initial_window = 40  # a node proven already: 40 tasks at once
    node = FakeNode(app, "n1")
    node.connect(credit=40)
    items = node.sink.take()
    assert len(items) == 40
    calls: Counter[str] = Counter()
    for name in WRITES:
        real = getattr(app.store, name)

        def counting(*args: Any, _name: str = name, _real: Any = real) -> Any:
            calls[_name] += 1
            return _real(*args)

        monkeypatch.setattr(app.store, name, counting)
    verdicts = node.answer(items)
    assert [v.accepted for v in verdicts] == [True] * 40
    assert max(calls.values()) == 1
    assert {"add_replicas", "update_attempts", "update_tasks", "post_many"} <= set(calls)
    # what the client and the volunteer see is what one write per result gave
    cost = app.store.get_job(job_id).task_cost(1)  # type: ignore[union-attr]
    states = Counter(t.state for t in app.store.list_tasks(job_id))
    assert states == {TaskState.SUCCEEDED: 40, TaskState.QUEUED: 1}
    assert sum(v.credit for v in verdicts) == 40 * cost
    assert app.store.balance(node_account(node.id)) == 40 * cost
    assert app.store.get_job(job_id).cost_spent == 40 * cost  # type: ignore[union-attr]
    assert app.reputations.get(node.id).validated == 40
    assert app.ledger.check().balanced
