"""The store interface every backend implements (memory, SQLite, PostgreSQL).

Each method is atomic on its own. Inside `with store.transaction():` all calls commit
together or not at all. Transactions nest: an inner block that raises undoes only its own
writes (a savepoint), and only the outermost one commits. Lists returned are
fresh copies: mutating them never changes the store.
"""

from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import NamedTuple, Protocol

from sparegrid.coordinator.domain import (
    Account,
    Attempt,
    AttemptLog,
    Delivery,
    Dispute,
    Event,
    Invite,
    Job,
    JobState,
    LedgerEntry,
    Node,
    Replica,
    Reputation,
    Task,
    TaskState,
    Transaction,
)


class StoreError(Exception):
    """Base of the errors a store raises on purpose."""


class StoreUnavailable(StoreError):
    """The database cannot be reached (its connection was lost); the message names it.
    Nothing of the call that met it was written."""


class StoreTaken(StoreError):
    """Another coordinator holds the database (it serves from it; this one stands by, or,
    having been cut off from it, has been taken over and must stop)."""


class Conflict(StoreError):
    """A unique value (account name, idempotency key of a job) is taken."""


class InsufficientFunds(StoreError):
    """A posting would take an account other than MINT below zero."""

    def __init__(self, account: str, balance: int, needed: int) -> None:
        super().__init__(f"{account} holds {balance}, {needed} needed")
        self.account = account
        self.balance = balance
        self.needed = needed


class BalanceOverflow(StoreError):
    """A posting would take an account's balance past MAX_BALANCE either way: above it, or
    (the mint, which issued the credit) below minus it."""

    def __init__(self, account: str, balance: int, change: int) -> None:
        super().__init__(f"{account} holds {balance}; {change:+} would pass 2^63 - 1")
        self.account = account
        self.balance = balance
        self.change = change


# The anonymous nodes' pool among the holders' totals: no account or node has this name.
ANONYMOUS_POOL = "*anonymous"


class Usage(NamedTuple):
    """Upload bytes counted against a holder (or a pool of holders)."""

    in_flight: int  # announced sizes of the uploads it has begun and not finished
    stored: int  # sizes of the blobs it uploaded, still charged to it


class LiveJob(NamedTuple):
    """A job whose blobs are kept: not finished, or finished within the retention."""

    created_at: float
    inputs: set[str]  # digests of its job-level inputs


class Posted(NamedTuple):
    """What post_many did: per transaction, whether it was new; and the balance, after
    them, of every account they name (read under the transaction's row locks), so a caller
    telling a node its total needs no read of its own."""

    new: list[bool]
    balances: dict[str, int]


class Store(Protocol):
    def transaction(self, defer_commit: bool = False) -> AbstractContextManager[None]:
        """All-or-nothing; nested, a savepoint. With `defer_commit` the outermost one ends
        without committing, and `finish_commit` commits it (from another thread)."""
        ...

    def finish_commit(self) -> None:
        """Commits what `transaction(defer_commit=True)` left open; raises, the transaction
        rolled back, if that fails."""

    def close(self) -> None: ...

    def reconnect(self) -> None:
        """Opens the database again after StoreUnavailable (a no-op where nothing was lost);
        raises StoreUnavailable while it cannot be reached."""

    def refresh_statistics(self) -> list[str]:
        """Gathers the query planner's statistics of the tables that changed much since
        (PostgreSQL: ANALYZE), on a connection of its own: safe to run in another thread.
        Returns the tables refreshed."""

    # accounts
    def create_account(self, account: Account) -> None:
        """Raises Conflict if the name is taken."""

    def get_account(self, account_id: str) -> Account | None: ...

    def get_account_by_name(self, name: str) -> Account | None: ...

    def get_account_by_key_hash(self, key_hash: str) -> Account | None: ...

    def list_accounts(self) -> list[Account]: ...

    def update_account(self, account: Account) -> None:
        """Writes its key hash, admin flag and disabled flag (found by id)."""

    # invitation codes (services/invites.py)
    def add_invite(self, invite: Invite) -> None:
        """Raises Conflict if its id or code hash is taken."""

    def get_invite(self, invite_id: str) -> Invite | None: ...

    def find_invite(self, code_hash: str) -> Invite | None: ...

    def list_invites(self) -> list[Invite]:
        """Newest first."""

    def revoke_invite(self, invite_id: str) -> None: ...

    def use_invite(self, code_hash: str, now: float) -> bool:
        """Counts one use of the invitation, in one step, if it is usable now: not
        revoked, not expired (expires_at 0 or after now), a use left. Returns whether it
        was; two callers racing for its last use cannot both win."""

    # ledger: append-only, double-entry
    def post(self, txn: Transaction) -> bool:
        """Appends a transaction and updates balances.

        Returns False, changing nothing, when a transaction with the same idempotency key
        was posted before. Raises ValueError if the postings do not sum to zero,
        InsufficientFunds if an account other than MINT would go below zero, and
        BalanceOverflow if a balance would pass MAX_BALANCE either way.
        """

    def post_many(self, txns: list[Transaction]) -> Posted:
        """Appends many transactions at once; per transaction, whether it was new, and the
        balances of the accounts they name, after them.

        A transaction whose idempotency key was posted before (or earlier in the list)
        changes nothing. Funds are checked on the net change of all the new ones together:
        InsufficientFunds (nothing written) if that takes an account other than MINT below
        zero, BalanceOverflow (nothing written) if it takes a balance past MAX_BALANCE.
        """

    def balance(self, account: str) -> int:
        """The cached balance (0 for an account with no entries)."""

    def balances(self, prefix: str = "") -> dict[str, int]:
        """Cached balances of accounts whose name starts with prefix."""

    def ledger_entries(
        self, account: str = "", job_id: str = "", limit: int = 100
    ) -> list[LedgerEntry]:
        """Newest first, filtered by exact account and/or job id when given."""

    def ledger_totals(self) -> tuple[int, int, int]:
        """(number of transactions, number of entries, sum of every amount)."""

    def unbalanced_transactions(self) -> list[tuple[str, int]]:
        """(transaction id, sum of its amounts) for every transaction not summing to 0."""

    def computed_balances(self) -> dict[str, int]:
        """Per account, the sum of its entries, recomputed from the entries."""

    def payments_by_job(self) -> dict[str, int]:
        """Per job id, the total credited to node accounts by that job's transactions."""

    # jobs and tasks
    def create_job(self, job: Job, tasks: list[Task]) -> None:
        """Raises Conflict if (account, idempotency key) is taken (a non-empty key)."""

    def add_tasks(self, tasks: list[Task]) -> None:
        """Inserts more tasks of jobs that exist (a large job is written in slices);
        Conflict if a task id, or a task index within its job, is taken."""

    def delete_tasks(self, job_id: str, start: int, stop: int) -> int:
        """Deletes the job's tasks with start <= index < stop, which must have no attempts
        or results (a submit that did not complete); returns how many."""

    def delete_job(self, job_id: str) -> None:
        """Deletes a job row whose tasks are gone, and that has no ledger entries."""

    def cancel_queued_tasks(self, job_id: str, start: int, stop: int) -> int:
        """Marks the job's QUEUED tasks with start <= index < stop CANCELLED; returns how
        many."""

    def get_job(self, job_id: str) -> Job | None: ...

    def find_job(self, account_id: str, idempotency_key: str) -> Job | None: ...

    def list_jobs(
        self, account_id: str | None = None, states: list[JobState] | None = None, limit: int = 100
    ) -> list[Job]:
        """Newest first; all accounts when account_id is None."""

    def update_job(self, job: Job) -> None:
        """Writes state, cost_held, cost_spent, error, finished_at, tasks_succeeded and
        tasks_failed."""

    def task_counts(self, job_id: str) -> dict[TaskState, int]:
        """Every TaskState is a key, with 0 where no task is in it."""

    def get_tasks(self, task_ids: list[str]) -> list[Task]:
        """The tasks that exist, in no particular order."""

    def list_tasks(self, job_id: str, after_index: int = -1, limit: int = 1000) -> list[Task]:
        """Tasks of a job with index > after_index, by index."""

    def queued_tasks(self) -> list[Task]:
        """Every QUEUED task, oldest job first, then by index."""

    def update_tasks(self, tasks: list[Task]) -> None:
        """Writes state, attempts, node_id, outputs, receipt and error."""

    def lease_tasks(self, attempts: list[Attempt]) -> list[Attempt]:
        """For each attempt whose task is QUEUED: the task becomes LEASED, its attempt
        count grows by one, and the attempt is inserted. Returns those attempts; the
        others (task no longer queued) are skipped."""

    # attempts
    def get_attempts(self, attempt_ids: list[str]) -> list[Attempt]: ...

    def running_attempts(self, node_id: str | None = None) -> list[Attempt]: ...

    def expired_attempts(self, now: float, limit: int = 1000) -> list[Attempt]:
        """RUNNING attempts whose deadline is before now."""

    def renew_leases(self, node_id: str, deadline: float, max_age: float) -> int:
        """Moves the deadline of every RUNNING attempt of the node to `deadline`, or to its
        created_at + max_age when that is sooner; returns how many."""

    def shift_running(self, seconds: float) -> int:
        """Moves the created_at and deadline of every RUNNING attempt by `seconds` (the
        wall clock stepped); returns how many."""

    def update_attempts(self, attempts: list[Attempt]) -> None:
        """Writes state, deadline, finished_at, error_code, error and claims."""

    def failure_claims(self, job_ids: list[str]) -> list[tuple[Attempt, str]]:
        """The attempts of the jobs' queued or leased tasks that carry claims (what their
        failure counted for), oldest first, each with the owner its node answers for now
        (owner_of; "node:<id>" for a node not known). One query for all the jobs, reading
        only such attempts: a job's other attempts, a million of them, are not touched."""

    def clear_claims(self, job_id: str) -> None:
        """Forgets what the job's attempts counted for: a retry runs its tasks afresh."""

    def node_failures(self, job_id: str) -> dict[str, int]:
        """Per node id, its FAILED, EXPIRED or REJECTED attempts on the job."""

    # nodes
    def upsert_node(self, node: Node) -> None:
        """Inserts, or updates name, public key, devices, software, executors, owner and
        last_seen; counters and first_seen of a known node are kept."""

    def touch_nodes(self, seen: Mapping[str, float]) -> None:
        """Moves each node's last_seen forward to the time given (never back), all in one
        statement: heartbeats are kept in memory and written in bulk."""

    def get_node(self, node_id: str) -> Node | None: ...

    def list_nodes(self) -> list[Node]: ...

    def add_node_counts(self, node_id: str, succeeded: int, failed: int) -> None: ...

    # verification: results held for comparison, and what is known of each node
    def add_replicas(self, replicas: list[Replica]) -> None:
        """Inserts results held for comparison; Conflict if an attempt has one already."""

    def update_replicas(self, replicas: list[Replica]) -> None:
        """Writes the state of each replica."""

    def get_replicas(self, task_ids: list[str]) -> list[Replica]:
        """Every replica of the tasks, oldest first (then by attempt id)."""

    def get_reputations(self, node_ids: list[str] | None = None) -> list[Reputation]:
        """Reputations of the nodes that have one (all when node_ids is None), by node id."""

    def put_reputations(self, reputations: list[Reputation]) -> None:
        """Inserts or replaces each node's reputation."""

    def put_disputes(self, disputes: list[Dispute]) -> None:
        """Inserts or replaces each task's dispute."""

    def get_disputes(self, job_id: str, limit: int = 100) -> list[Dispute]:
        """A job's disputes, by task index."""

    # what a database holds once for all its coordinators (its coordinator key)
    def claim_meta(self, name: str, value: str) -> str:
        """Stores `value` under `name` unless a value is stored there already; returns the
        one stored (the first claim's)."""
        ...

    # task logs (services/results.py); an attempt's second log is ignored
    def add_task_logs(self, logs: list[AttemptLog]) -> None: ...

    def task_log_count(self, job_id: str) -> int: ...

    def task_logs(
        self, job_id: str, task_index: int | None = None, offset: int = 0, limit: int = 0
    ) -> list[AttemptLog]:
        """A job's logs (or one task's), by task index, then as received: `limit` of them
        (0: all) after the first `offset`."""
        ...

    # webhook calls owed (services/webhooks.py)
    def add_webhook(self, delivery: Delivery) -> None: ...

    def due_webhooks(self, now: float, limit: int) -> list[Delivery]:
        """Pending deliveries whose time has come, oldest first."""

    def update_webhook(self, delivery: Delivery) -> None:
        """Records a delivery's attempts, next time, state and last error."""

    def get_webhooks(self, job_id: str) -> list[Delivery]: ...

    # blobs: who may read what, and small blobs kept in the database
    def add_blob_owners(self, digests: list[str], account_id: str) -> None: ...

    def blob_owned(self, digest: str, account_id: str) -> bool: ...

    def add_uploads(self, uploads: list[tuple[str, str]]) -> None:
        """Records (attempt id, digest): the attempt's node uploaded that output."""

    def uploaded(self, attempt_id: str, digests: list[str]) -> set[str]:
        """Those of the digests that the attempt's node uploaded for it."""

    def put_inline_blobs(
        self,
        blobs: dict[str, bytes],
        now: float,
        holder: str = "",
        anonymous: bool = False,
        fresh: set[str] | None = None,
    ) -> None:
        """Keeps small blobs (outputs sent inline with results) in the database, each
        recorded as a blob used now, to be collected as any blob is (drop_blobs), and with
        a holder, charged to it as record_blob charges an upload. `fresh`, when the caller
        read it in this transaction: those of the blobs not charged to the holder yet (the
        others' charges are renewed), which spares the store reading it again."""

    def get_inline_blob(self, digest: str) -> bytes | None: ...

    # storage: what each holder (an account, or a node's owner) uploads, blobs by last
    # use for collection, and nodes that never worked

    def put_partial(
        self, uploader: str, digest: str, holder: str, anonymous: bool, size: int, now: float
    ) -> None:
        """Records (or renews) the unfinished upload of `digest` by `uploader`, counted at
        its announced size against `holder` (and the anonymous pool when `anonymous`)."""

    def drop_partials(self, keys: list[tuple[str, str]]) -> None:
        """Forgets the unfinished uploads (uploader, digest) named."""

    def stale_partials(self, before: float, limit: int = 1000) -> list[tuple[str, str]]:
        """(uploader, digest) of unfinished uploads last begun before `before`, oldest
        first."""

    def record_blob(
        self, digest: str, size: int, now: float, holder: str = "", anonymous: bool = False
    ) -> None:
        """A stored blob was uploaded or named again now: its last use becomes `now`, and
        with a holder, the holder is charged its size (once per blob) from now."""

    def charged(self, holder: str, digests: list[str]) -> set[str]:
        """Those of the digests charged to the holder now."""

    def adopt_blobs(self, blobs: list[tuple[str, int, float]]) -> int:
        """Records stored blobs (digest, size, last use) not recorded yet (files written
        before blobs were recorded); returns how many were new."""

    def usage(self, holder: str) -> Usage:
        """The holder's unfinished uploads and the blobs charged to it."""

    def anonymous_usage(self) -> Usage:
        """The same, for every anonymous holder together."""

    def stale_blobs(self, before: float, limit: int = 1000) -> list[tuple[str, int]]:
        """(digest, size) of recorded blobs last used before `before`, oldest first."""

    def blob_uses(self, digests: list[str], before: float) -> list[str]:
        """Those of the recorded digests last used before `before`."""

    def drop_blobs(self, digests: list[str]) -> set[str]:
        """Forgets the blobs: their record, their charges, who may read them, and the bytes
        of those kept in the database. Returns those that were kept there only (no file to
        delete)."""

    def expire_charges(self, before: float) -> int:
        """Ends the charges of uploads made before `before` (a blob still stored then is
        kept for a job, not its uploader); returns how many."""

    def live_jobs(self, finished_after: float) -> dict[str, LiveJob]:
        """Every job not finished, or finished at or after `finished_after`, by id."""

    def task_blob_refs(
        self, job_id: str, after_index: int = -1, limit: int = 1000
    ) -> tuple[set[str], int | None]:
        """Digests the job's tasks with index > after_index name (up to `limit` tasks):
        inputs, outputs, and outputs of their replicas. Returns them with the last index
        read, or None when no task is left after it."""

    def idle_nodes(self, seen_before: float, limit: int = 1000) -> list[str]:
        """Nodes last seen before `seen_before` that never did work: no attempt, no
        ledger entry, and no standing but `pending`. Oldest first."""

    def delete_nodes(self, node_ids: list[str]) -> None:
        """Deletes the nodes and a `pending` standing they have."""

    # events: what an operator follows (services/events.py), oldest trimmed

    def add_events(self, events: list[Event]) -> None:
        """Appends events; each is given the next sequence number (its `seq` is ignored)."""

    def list_events(
        self,
        after: int = 0,
        limit: int = 100,
        newest: bool = False,
        job_id: str = "",
        node_ids: list[str] | None = None,
        kinds: list[str] | None = None,
    ) -> list[Event]:
        """Events with seq > after, oldest first; with `newest`, the latest `limit` of them
        (still oldest first). Filtered by job id, by any of the node ids and by any of the
        kinds, when given."""

    def trim_events(self, keep: int) -> int:
        """Deletes all but the latest `keep` events; returns how many."""
