"""The SQL schema, as versioned migrations shared by SQLite and PostgreSQL.

Scripts are written once. Statements are separated by ";" and hold no other ";". The
column types that differ between the two are named by placeholders the dialect fills in:
{real} for unix-second times, {blob} for bytes and {serial} for an auto-numbered primary
key; {now} is the time a script runs, in unix seconds. Lists and dicts are JSON text. Append new migrations; never edit an applied one.
"""

SCHEMA_VERSION_TABLE = """
CREATE TABLE IF NOT EXISTS schema_version (
    version INTEGER PRIMARY KEY,
    applied_at {real} NOT NULL
)
"""

INITIAL = """
CREATE TABLE accounts (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    key_hash TEXT NOT NULL UNIQUE,
    is_admin BOOLEAN NOT NULL,
    created_at {real} NOT NULL
);

CREATE TABLE transactions (
    id TEXT PRIMARY KEY,
    idempotency_key TEXT NOT NULL UNIQUE,
    reason TEXT NOT NULL,
    job_id TEXT NOT NULL,
    task_id TEXT NOT NULL,
    created_at {real} NOT NULL
);

CREATE TABLE entries (
    seq {serial},
    transaction_id TEXT NOT NULL REFERENCES transactions (id),
    account TEXT NOT NULL,
    amount BIGINT NOT NULL,
    reason TEXT NOT NULL,
    job_id TEXT NOT NULL,
    task_id TEXT NOT NULL,
    created_at {real} NOT NULL
);
CREATE INDEX entries_account ON entries (account);
CREATE INDEX entries_job_id ON entries (job_id);

CREATE TABLE balances (
    account TEXT PRIMARY KEY,
    balance BIGINT NOT NULL
);

CREATE TABLE jobs (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    params {blob} NOT NULL,
    inputs TEXT NOT NULL,
    requirements TEXT NOT NULL,
    max_attempts INTEGER NOT NULL,
    price_per_task BIGINT NOT NULL,
    task_count INTEGER NOT NULL,
    state TEXT NOT NULL,
    cost_held BIGINT NOT NULL,
    cost_spent BIGINT NOT NULL,
    error TEXT NOT NULL,
    created_at {real} NOT NULL,
    finished_at {real},
    idempotency_key TEXT NOT NULL
);
CREATE UNIQUE INDEX jobs_idempotency_key ON jobs (account_id, idempotency_key)
    WHERE idempotency_key <> '';
CREATE INDEX jobs_account_created ON jobs (account_id, created_at);
CREATE INDEX jobs_created ON jobs (created_at);

CREATE TABLE tasks (
    id TEXT PRIMARY KEY,
    job_id TEXT NOT NULL REFERENCES jobs (id),
    idx INTEGER NOT NULL,
    params {blob} NOT NULL,
    inputs TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    node_id TEXT NOT NULL,
    outputs TEXT NOT NULL,
    receipt {blob} NOT NULL,
    error TEXT NOT NULL
);
CREATE UNIQUE INDEX tasks_job_idx ON tasks (job_id, idx);

CREATE TABLE attempts (
    id TEXT PRIMARY KEY,
    task_id TEXT NOT NULL REFERENCES tasks (id),
    job_id TEXT NOT NULL REFERENCES jobs (id),
    node_id TEXT NOT NULL,
    device_index INTEGER NOT NULL,
    deadline {real} NOT NULL,
    state TEXT NOT NULL,
    created_at {real} NOT NULL,
    finished_at {real},
    error_code TEXT NOT NULL,
    error TEXT NOT NULL
);
CREATE INDEX attempts_node_state ON attempts (node_id, state);
CREATE INDEX attempts_state_deadline ON attempts (state, deadline);
CREATE INDEX attempts_job ON attempts (job_id);

CREATE TABLE nodes (
    id TEXT PRIMARY KEY,
    public_key {blob} NOT NULL,
    name TEXT NOT NULL,
    devices TEXT NOT NULL,
    software TEXT NOT NULL,
    executors TEXT NOT NULL,
    first_seen {real} NOT NULL,
    last_seen {real} NOT NULL,
    tasks_succeeded BIGINT NOT NULL,
    tasks_failed BIGINT NOT NULL
);

CREATE TABLE blob_owners (
    digest TEXT NOT NULL,
    account_id TEXT NOT NULL,
    PRIMARY KEY (digest, account_id)
);

CREATE TABLE inline_blobs (
    digest TEXT PRIMARY KEY,
    data {blob} NOT NULL
)
"""

# The trust layer: prices per work unit instead of a flat price per task, a verification
# policy per job, work units per task, node owners, results held for comparison and
# node reputations. Jobs from before keep their price (per task of 1 unit) and run with
# the single-result policy (replicas = quorum = 1) they were submitted under.
TRUST = """
ALTER TABLE jobs ADD COLUMN price_credit BIGINT NOT NULL DEFAULT 1;
ALTER TABLE jobs ADD COLUMN price_units BIGINT NOT NULL DEFAULT 1;
UPDATE jobs SET price_credit = price_per_task;
ALTER TABLE jobs DROP COLUMN price_per_task;
ALTER TABLE jobs ADD COLUMN replicas INTEGER NOT NULL DEFAULT 1;
ALTER TABLE jobs ADD COLUMN quorum INTEGER NOT NULL DEFAULT 1;
ALTER TABLE tasks ADD COLUMN work BIGINT NOT NULL DEFAULT 1;
ALTER TABLE nodes ADD COLUMN owner TEXT NOT NULL DEFAULT '';

CREATE TABLE replicas (
    attempt_id TEXT PRIMARY KEY,
    task_id TEXT NOT NULL REFERENCES tasks (id),
    job_id TEXT NOT NULL REFERENCES jobs (id),
    node_id TEXT NOT NULL,
    owner TEXT NOT NULL,
    outputs TEXT NOT NULL,
    receipt {blob} NOT NULL,
    state TEXT NOT NULL,
    created_at {real} NOT NULL
);
CREATE INDEX replicas_task ON replicas (task_id);

CREATE TABLE reputations (
    node_id TEXT PRIMARY KEY,
    streak BIGINT NOT NULL,
    validated BIGINT NOT NULL,
    invalid BIGINT NOT NULL,
    strikes INTEGER NOT NULL,
    standing TEXT NOT NULL,
    reason TEXT NOT NULL,
    updated_at {real} NOT NULL
)
"""

# Spot checks: an attempt (and the result it returns) may run other params than its
# task's, a crop of a rendered frame; empty for every attempt and result before.
SPOT_CHECKS = """
ALTER TABLE attempts ADD COLUMN params {blob} NOT NULL DEFAULT '';
ALTER TABLE replicas ADD COLUMN params {blob} NOT NULL DEFAULT ''
"""

# Outputs a node uploaded, per attempt: a result may name a blob as an output only if its
# node sent it inline or uploaded it for that attempt.
UPLOADS = """
CREATE TABLE uploads (
    attempt_id TEXT NOT NULL,
    digest TEXT NOT NULL,
    PRIMARY KEY (attempt_id, digest)
)
"""

# Disputes: results of a task that disagreed, with the evidence (JSON).
DISPUTES = """
CREATE TABLE disputes (
    task_id TEXT PRIMARY KEY,
    job_id TEXT NOT NULL,
    task_index INTEGER NOT NULL,
    state TEXT NOT NULL,
    evidence TEXT NOT NULL,
    created_at {real} NOT NULL,
    updated_at {real} NOT NULL
);
CREATE INDEX disputes_job ON disputes (job_id, task_index)
"""

# Storage limits: every blob stored on disk with its last use (an upload, or a node
# naming it as an output), so that one no job needs is collected after the retention;
# what each holder (an account, or a node's owner; anonymous nodes also count together)
# uploaded, for its stored-bytes quota; uploads begun and not finished, counted at their
# announced size against the in-flight quota until they finish or expire; and each
# holder's totals of both (and the anonymous pool's, under "*anonymous"), kept with every
# change so that a quota check reads one row.
STORAGE = """
CREATE TABLE blobs (
    digest TEXT PRIMARY KEY,
    size BIGINT NOT NULL,
    used_at {real} NOT NULL
);
CREATE INDEX blobs_used ON blobs (used_at);

CREATE TABLE blob_charges (
    holder TEXT NOT NULL,
    digest TEXT NOT NULL,
    anonymous BOOLEAN NOT NULL,
    size BIGINT NOT NULL,
    charged_at {real} NOT NULL,
    PRIMARY KEY (holder, digest)
);
CREATE INDEX blob_charges_digest ON blob_charges (digest);
CREATE INDEX blob_charges_time ON blob_charges (charged_at);

CREATE TABLE partial_uploads (
    uploader TEXT NOT NULL,
    digest TEXT NOT NULL,
    holder TEXT NOT NULL,
    anonymous BOOLEAN NOT NULL,
    size BIGINT NOT NULL,
    updated_at {real} NOT NULL,
    PRIMARY KEY (uploader, digest)
);

CREATE TABLE upload_usage (
    holder TEXT PRIMARY KEY,
    in_flight BIGINT NOT NULL,
    stored BIGINT NOT NULL
)
"""

# Large jobs: a job's tasks may be written in slices, and a submit that did not complete
# is deleted (without the index every deleted task would scan the attempts table for rows
# that refer to it); a finished job records how many of its tasks succeeded and failed, so
# showing it needs no count over a million task rows (-1: a job from before, counted).
LARGE_JOBS = """
CREATE INDEX attempts_task ON attempts (task_id);
ALTER TABLE jobs ADD COLUMN tasks_succeeded BIGINT NOT NULL DEFAULT -1;
ALTER TABLE jobs ADD COLUMN tasks_failed BIGINT NOT NULL DEFAULT -1
"""

# Operator controls: a disabled account's key is refused.
ACCOUNT_CONTROL = """
ALTER TABLE accounts ADD COLUMN disabled BOOLEAN NOT NULL DEFAULT FALSE
"""

# Events an operator follows (`sparegrid admin events`, the dashboard): job, task-failure,
# dispute, quarantine, ban and ledger events with their ids, the oldest trimmed to a bound.
EVENTS = """
CREATE TABLE events (
    seq {serial},
    id TEXT NOT NULL,
    at {real} NOT NULL,
    kind TEXT NOT NULL,
    message TEXT NOT NULL,
    job_id TEXT NOT NULL,
    task_id TEXT NOT NULL,
    node_id TEXT NOT NULL,
    account TEXT NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX events_job ON events (job_id, seq);
CREATE INDEX events_node ON events (node_id, seq)
"""

# Clients: a job's priority among its account's jobs and the URL called when it ends; the
# webhook calls owed, kept until delivered (or given up) so a restart loses none.
CLIENTS = """
ALTER TABLE jobs ADD COLUMN priority BIGINT NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN webhook_url TEXT NOT NULL DEFAULT '';
CREATE TABLE webhooks (
    id TEXT PRIMARY KEY,
    job_id TEXT NOT NULL,
    account_id TEXT NOT NULL,
    url TEXT NOT NULL,
    body {blob} NOT NULL,
    attempts BIGINT NOT NULL,
    next_at {real} NOT NULL,
    state TEXT NOT NULL,
    last_error TEXT NOT NULL,
    created_at {real} NOT NULL
);
CREATE INDEX webhooks_due ON webhooks (state, next_at);
CREATE INDEX webhooks_job ON webhooks (job_id)
"""

# Invitation codes (services/invites.py): the hash of each code, how many signups it allows
# and has let through, its credit per account, when it expires (0: never), and whether an
# operator revoked it.
INVITES = """
CREATE TABLE invites (
    id TEXT PRIMARY KEY,
    code_hash TEXT NOT NULL UNIQUE,
    uses BIGINT NOT NULL,
    used BIGINT NOT NULL,
    credit BIGINT NOT NULL,
    note TEXT NOT NULL,
    created_at {real} NOT NULL,
    expires_at {real} NOT NULL,
    revoked BOOLEAN NOT NULL
)
"""

# Task logs: what an attempt's executor wrote (at most 64 KiB), as its node signed it, kept
# for failed attempts and, for a job that asks (keep_logs), successful ones; read by job.
TASK_LOGS = """
ALTER TABLE jobs ADD COLUMN keep_logs BOOLEAN NOT NULL DEFAULT FALSE;
CREATE TABLE task_logs (
    attempt_id TEXT PRIMARY KEY,
    job_id TEXT NOT NULL,
    task_id TEXT NOT NULL,
    task_index BIGINT NOT NULL,
    node_id TEXT NOT NULL,
    outcome TEXT NOT NULL,
    statement {blob} NOT NULL,
    signature {blob} NOT NULL,
    text {blob} NOT NULL,
    public_key {blob} NOT NULL,
    received_at {real} NOT NULL
);
CREATE INDEX task_logs_job ON task_logs (job_id, task_index, received_at)
"""

# What a database holds once for all its coordinators: the key its coordinators countersign
# with (services go by its public key: clients pin it, receipts name it).
META = """
CREATE TABLE meta (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
)
"""

# Outputs sent inline with results are blobs kept in the database: each is recorded in
# blobs (kept_inline: its bytes are in inline_blobs only, with no file to delete) so that
# it is collected like any other blob, and charged to the node's holder (blob_charges).
# Those kept before are recorded as used now: kept for one retention from the upgrade,
# then only while a job needs them.
INLINE_CHARGES = """
ALTER TABLE blobs ADD COLUMN kept_inline BOOLEAN NOT NULL DEFAULT FALSE;
INSERT INTO blobs (digest, size, used_at, kept_inline)
    SELECT i.digest, length(i.data), {now}, TRUE FROM inline_blobs i
    WHERE NOT EXISTS (SELECT 1 FROM blobs b WHERE b.digest = i.digest)
"""

# When each webhook call was last made, for its job's owner to see (GetJob); 0 before the
# first call, and for calls recorded before this column.
WEBHOOK_TRIED = """
ALTER TABLE webhooks ADD COLUMN tried_at {real} NOT NULL DEFAULT 0
"""

# What each failed attempt counted for with the scheduler (domain.Claim: a failure called
# final, counted against its owner, the task's own fault, doubted, its owner kept off the
# task), so that a restart or a standby taking over rebuilds it; indexed by job for the
# few attempts that carry any, read when the job is loaded (0: before, or nothing).
FAILURE_CLAIMS = """
ALTER TABLE attempts ADD COLUMN claims INTEGER NOT NULL DEFAULT 0;
CREATE INDEX attempts_claims ON attempts (job_id) WHERE claims <> 0
"""

# (version, script), applied in order; schema_version records each one applied.
MIGRATIONS: list[tuple[int, str]] = [
    (1, INITIAL),
    (2, TRUST),
    (3, SPOT_CHECKS),
    (4, UPLOADS),
    (5, DISPUTES),
    (6, STORAGE),
    (7, LARGE_JOBS),
    (8, ACCOUNT_CONTROL),
    (9, EVENTS),
    (10, CLIENTS),
    (11, INVITES),
    (12, TASK_LOGS),
    (13, META),
    (14, INLINE_CHARGES),
    (15, WEBHOOK_TRIED),
    (16, FAILURE_CLAIMS),
]


def statements(script: str, types: dict[str, str]) -> list[str]:
    """The script's statements with the dialect's column types filled in."""
    filled = script.format(**types)
    return [s.strip() for s in filled.split(";") if s.strip()]
