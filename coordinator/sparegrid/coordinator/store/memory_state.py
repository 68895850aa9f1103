"""The in-memory store's state, the records it keeps in dicts, and the copies it hands out."""

import copy
from dataclasses import dataclass, field
from typing import TypeVar

from sparegrid.coordinator.domain import (
    Account,
    Attempt,
    AttemptLog,
    Delivery,
    Dispute,
    Event,
    Invite,
    Job,
    LedgerEntry,
    Node,
    Replica,
    Reputation,
    Task,
)
from sparegrid.coordinator.store.memory_storage import StorageState

T = TypeVar("T")


def _copies(items: list[T]) -> list[T]:
    return [copy.deepcopy(item) for item in items]


@dataclass
class _State:
    accounts: dict[str, Account] = field(default_factory=dict)
    ledger_keys: set[str] = field(default_factory=set)  # idempotency keys posted
    ledger_ids: set[str] = field(default_factory=set)  # transaction ids posted
    entries: list[LedgerEntry] = field(default_factory=list)  # oldest first
    balances: dict[str, int] = field(default_factory=dict)
    jobs: dict[str, Job] = field(default_factory=dict)
    tasks: dict[str, Task] = field(default_factory=dict)
    job_tasks: dict[str, list[str]] = field(default_factory=dict)  # task ids by index
    attempts: dict[str, Attempt] = field(default_factory=dict)
    nodes: dict[str, Node] = field(default_factory=dict)
    replicas: dict[str, Replica] = field(default_factory=dict)  # by attempt id
    reputations: dict[str, Reputation] = field(default_factory=dict)
    blob_owners: set[tuple[str, str]] = field(default_factory=set)
    uploads: set[tuple[str, str]] = field(default_factory=set)
    disputes: dict[str, Dispute] = field(default_factory=dict)
    webhooks: dict[str, Delivery] = field(default_factory=dict)
    task_logs: dict[str, AttemptLog] = field(default_factory=dict)  # by attempt id
    meta: dict[str, str] = field(default_factory=dict)
    inline_blobs: dict[str, bytes] = field(default_factory=dict)
    storage: StorageState = field(default_factory=StorageState)
    events: list[Event] = field(default_factory=list)  # oldest first
    event_seq: int = 0
    invites: dict[str, Invite] = field(default_factory=dict)
