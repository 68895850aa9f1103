"""The store contract for events, on every backend: sequence, filters, trimming, rollback."""

import pytest

from sparegrid.coordinator.domain import Event
from sparegrid.coordinator.store.base import Store


def event(n: int, job: str = "", node: str = "") -> Event:
    return Event(
        f"e{n}",
        float(n),
        "job.finished",
        f"event {n}",
        job_id=job,
        node_id=node,
        data={"n": n, "text": "<b>"},
    )


def test_events_get_increasing_seq_and_read_back(store: Store) -> None:
    store.add_events([event(1, job="j1"), event(2, node="n1")])
    store.add_events([event(3, job="j1", node="n2")])
    found = store.list_events()
    assert [e.id for e in found] == ["e1", "e2", "e3"]
    assert found[0].seq < found[1].seq < found[2].seq
    assert found[0].data == {"n": 1, "text": "<b>"} and found[0].message == "event 1"
    assert [e.id for e in store.list_events(after=found[0].seq)] == ["e2", "e3"]
    assert [e.id for e in store.list_events(limit=2, newest=True)] == ["e2", "e3"]
    assert [e.id for e in store.list_events(job_id="j1")] == ["e1", "e3"]
    assert [e.id for e in store.list_events(node_ids=["n1", "n2"])] == ["e2", "e3"]
    assert store.list_events(node_ids=[]) == []


def test_trim_keeps_the_latest(store: Store) -> None:
    store.add_events([event(n) for n in range(10)])
    assert store.trim_events(keep=3) == 7
    assert [e.id for e in store.list_events()] == ["e7", "e8", "e9"]
    assert store.trim_events(keep=3) == 0
    store.add_events([event(10)])
    assert [e.id for e in store.list_events()][-1] == "e10"
    assert store.list_events()[-1].seq > store.list_events()[0].seq


def test_events_of_a_failed_transaction_are_not_kept(store: Store) -> None:
    with pytest.raises(RuntimeError), store.transaction():
        store.add_events([event(1)])
        raise RuntimeError("the group commit failed")
    assert store.list_events() == []
