"""What each dashboard page shows, read from the services and the store (no gRPC).

Plain functions over the App returning dataclasses the templates render; every string in
them is rendered escaped. Who may see what is decided in dashboard.py; these functions are
given the account and read only what it may see.
"""

import io
import time
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from sparegrid.coordinator.app import App
from sparegrid.coordinator.blobs import BlobStore
from sparegrid.coordinator.domain import (
    Account,
    Delivery,
    Dispute,
    Event,
    FileRef,
    Job,
    JobState,
    Node,
    Standing,
    Task,
    TaskState,
    node_account,
    owner_of,
)
from sparegrid.coordinator.services.images import decode_png
from sparegrid.coordinator.services.ledger import LedgerReport
from sparegrid.coordinator.services.scheduler import NodeSession
from sparegrid.coordinator.states import FINAL_JOB_STATES

THUMB_SIZE = 240  # pixels, the longer side
JOBS_SHOWN = 50
EVENTS_SHOWN = 50
FAILED_SHOWN = 100
FRAMES_SHOWN = 48


@dataclass
class JobRow:
    job: Job
    owner: str
    done: int
    failed: int
    running: int
    queued: int
    progress: float  # 0..1 of tasks that succeeded or failed
    eta: str  # "" when finished or not yet known
    waiting: str = ""  # why no node takes its tasks, when none does

    @property
    def finished(self) -> bool:
        return self.job.state in FINAL_JOB_STATES


@dataclass
class NodeRow:
    node: Node
    owner: str
    online: str  # online, draining, offline
    standing: str
    reason: str
    credit: int
    validated: int
    invalid: int
    strikes: int
    in_flight: int
    window: int
    vetted: str  # "" when its results count as votes, else why not


@dataclass
class OwnerRow:
    name: str
    nodes: int
    online: int
    blocked: int  # quarantined, banned or pending
    credit: int
    stake: int
    vetted: str


@dataclass
class Frame:
    index: int
    name: str


@dataclass
class JobPage:
    row: JobRow
    failed: list[Task]
    frames: list[Frame]
    events: list[Event]
    disputes: list[Dispute]
    webhook: Delivery | None = None  # its webhook's call once it ended (the error cleaned)
    webhook_attempts: int = 0  # calls made at most


@dataclass
class Earnings:
    """Credit paid to an owner's nodes, per day (oldest first), for a bar chart."""

    days: list[tuple[str, int]] = field(default_factory=list)
    total: int = 0

    @property
    def peak(self) -> int:
        return max((amount for _, amount in self.days), default=0)


def _eta(job: Job, done: int, now: float) -> str:
    left = job.task_count - done
    if job.state in FINAL_JOB_STATES or left <= 0:
        return ""
    elapsed = now - job.created_at
    if done <= 0 or elapsed <= 0:
        return "unknown yet"
    return duration(left * elapsed / done)


def duration(seconds: float) -> str:
    seconds = max(int(seconds), 0)
    if seconds < 90:
        return f"{seconds} s"
    if seconds < 5400:
        return f"{seconds // 60} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def job_row(app: App, job: Job, owner: str = "", explain: bool = False) -> JobRow:
    """A job's progress; with `explain`, why no node takes its tasks when none does (a scan
    of every session: for one job's page, not for a list)."""
    counts = app.jobs.counts(job)
    done = counts[TaskState.SUCCEEDED]
    failed = counts[TaskState.FAILED]
    ended = done + failed  # a cancelled task made no progress: a job cancelled at once is 0%
    row = JobRow(
        job,
        owner,
        done,
        failed,
        counts[TaskState.LEASED],
        counts[TaskState.QUEUED],
        ended / job.task_count if job.task_count else 1.0,
        _eta(job, done + failed, app.clock.now()),
    )
    if explain and job.state == JobState.QUEUED and job.id in app.scheduler.jobs:
        row.waiting = app.jobs.waiting(job.id)
    return row


def client_jobs(app: App, account: Account) -> list[JobRow]:
    return [job_row(app, job, account.name) for job in app.jobs.list_jobs(account, JOBS_SHOWN)]


def job_page(app: App, job: Job, owner: str) -> JobPage:
    store = app.store
    failed: list[Task] = []
    frames: list[Frame] = []
    after = -1
    while len(failed) < FAILED_SHOWN:
        tasks = store.list_tasks(job.id, after_index=after, limit=1000)
        if not tasks:
            break
        for task in tasks:
            if task.state == TaskState.FAILED and len(failed) < FAILED_SHOWN:
                failed.append(task)
            if task.state == TaskState.SUCCEEDED and len(frames) < FRAMES_SHOWN:
                frames += [Frame(task.index, o.name) for o in _pngs(task)][:1]
        after = tasks[-1].index
        if job.task_count > 10_000:  # a huge job: its first tasks only
            break
    return JobPage(
        job_row(app, job, owner, explain=True),
        failed,
        frames,
        store.list_events(limit=EVENTS_SHOWN, newest=True, job_id=job.id)[::-1],
        store.get_disputes(job.id, limit=20),
        app.webhooks.latest(job),
        app.webhooks.config.max_attempts,
    )


def _pngs(task: Task) -> list[FileRef]:
    return [o for o in task.outputs if o.name.lower().endswith(".png")]


def thumbnail_source(app: App, job: Job, index: int) -> tuple[str, bytes | None] | None:
    """The first PNG output of the job's task `index`, if it succeeded with one: its digest,
    and its bytes when the store keeps them inline (else `read_blob` them off the loop).
    An index past the job's tasks is none (SQLite refused one past a BIGINT: a 500)."""
    if index >= job.task_count:
        return None
    tasks = app.store.list_tasks(job.id, after_index=index - 1, limit=1)
    if not tasks or tasks[0].index != index or tasks[0].state != TaskState.SUCCEEDED:
        return None
    outputs = _pngs(tasks[0])
    if not outputs:
        return None
    return outputs[0].digest, app.store.get_inline_blob(outputs[0].digest)


def read_blob(blobs: BlobStore, digest: str) -> bytes | None:
    """A blob's bytes from a local file (a bucket's blob through the read cache); None
    when it is not stored. May wait for a disk or a network: run it in a worker thread."""
    path = blobs.path(digest)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def make_thumbnail(png: bytes) -> bytes:
    """A small 8-bit PNG of a frame (decoded within images.py's size limits); ValueError
    when it is not a PNG that decodes."""
    pixels = decode_png(png)
    channels = pixels.shape[2]
    mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[channels]
    levels = np.clip(pixels * 255 + 0.5, 0, 255).astype(np.uint8)
    image = Image.fromarray(levels.squeeze(2) if channels == 1 else levels, mode)
    image.thumbnail((THUMB_SIZE, THUMB_SIZE))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def node_rows(app: App, nodes: list[Node]) -> list[NodeRow]:
    balances = app.store.balances("node:")
    rows = []
    for node in nodes:
        session = app.scheduler.sessions.get(node.id)
        rep = app.reputations.get(node.id)
        online = _online(session, node)
        rows.append(
            NodeRow(
                node,
                owner_of(node),
                online,
                rep.standing.value,
                rep.reason if rep.standing != Standing.ACTIVE else "",
                balances.get(node_account(node.id), 0),
                rep.validated,
                rep.invalid,
                rep.strikes,
                len(session.leases) if session is not None else 0,
                app.scheduler.window(node.id),
                app.identities.why_not_vetted(node.owner),
            )
        )
    return rows


def _online(session: NodeSession | None, node: Node) -> str:
    """offline, draining, online, or which devices its owner's policy paused (the owner
    uses the GPU, it is too hot, outside its hours: the worker says which)."""
    if session is None:
        return "offline"
    if session.draining:
        return "draining"
    paused = sorted(session.paused)
    if paused and len(paused) >= len(node.devices):
        return "paused by its owner's policy"
    if paused:
        return f"online; device(s) {', '.join(map(str, paused))} paused by its owner's policy"
    return "online"


def owner_rows(nodes: list[NodeRow], app: App) -> list[OwnerRow]:
    by_owner: dict[str, list[NodeRow]] = defaultdict(list)
    for row in nodes:
        by_owner[row.owner].append(row)
    return [
        OwnerRow(
            owner,
            len(rows),
            sum(1 for r in rows if r.online not in ("offline", "draining")),
            sum(1 for r in rows if r.standing != Standing.ACTIVE.value),
            sum(r.credit for r in rows),
            app.identities.stake(owner),
            rows[0].vetted,
        )
        for owner, rows in sorted(by_owner.items())
    ]


def owned_nodes(app: App, account: Account) -> list[Node]:
    return [n for n in app.store.list_nodes() if n.owner == account.name]


def earnings(app: App, nodes: list[Node], days: int = 14) -> Earnings:
    """What the nodes were paid per day over the last `days` days (UTC)."""
    now = app.clock.now()
    start = (int(now) // 86400 - days + 1) * 86400
    per_day = dict.fromkeys(range(days), 0)
    total = 0
    for node in nodes:
        for entry in app.store.ledger_entries(account=node_account(node.id), limit=10_000):
            total += entry.amount
            day = (int(entry.created_at) - start) // 86400
            if 0 <= day < days:
                per_day[day] += entry.amount
    return Earnings(
        [(time.strftime("%m-%d", time.gmtime(start + d * 86400)), a) for d, a in per_day.items()],
        total,
    )


@dataclass
class Operator:
    jobs: list[JobRow]
    nodes: list[NodeRow]
    owners: list[OwnerRow]
    disputes: list[tuple[Job, Dispute]]
    events: list[Event]


def operator(app: App) -> Operator:
    store = app.store
    names = {a.id: a.name for a in store.list_accounts()}
    jobs = [
        job_row(app, j, names.get(j.account_id, "?")) for j in store.list_jobs(limit=JOBS_SHOWN)
    ]
    found = sorted(store.list_nodes(), key=lambda n: n.last_seen, reverse=True)
    nodes = node_rows(app, found)
    events = store.list_events(limit=EVENTS_SHOWN, newest=True)[::-1]
    disputes: list[tuple[Job, Dispute]] = []
    seen: set[str] = set()
    for event in reversed(store.list_events(limit=200, newest=True)):
        if event.kind != "dispute" or event.job_id in seen or len(seen) >= 10:
            continue
        seen.add(event.job_id)
        job = store.get_job(event.job_id)
        if job is not None:
            disputes += [(job, d) for d in store.get_disputes(job.id, limit=10)]
    return Operator(jobs, nodes, owner_rows(nodes, app), disputes, events)


def ledger_check(app: App) -> LedgerReport:
    return app.ledger.check()
