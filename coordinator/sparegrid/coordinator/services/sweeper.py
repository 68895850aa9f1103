"""What the coordinator deletes on its own: unfinished uploads past their age, blobs no
job needs past the retention, and nodes that registered and never worked.

A blob is kept while any of these holds: it was uploaded (or named by a node as an output,
or asked about by an owner) within the retention; a job not finished, or finished within
the retention, names it as an input, a task's input or output, or a replica's output. The
references are read job by job in short steps (`collect_blobs` yields between them, so the
coordinator serves meanwhile); the last step, which deletes, runs at once and checks again
what may have changed in between: a later use, jobs that became live since the walk
began, and the inputs of submits and retries in flight (checked, their job not written
yet, a large one written but not shown, or a retried one not queued again yet: `held`). A
collected blob is forgotten by the store first and then renamed out of sight; one kept in
the database (an output sent inline with its result) goes with its record.

These are plain synchronous steps on the store and the blob files; background.py runs
them in its background sweep.
"""

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from sparegrid.coordinator.blobs import BlobStore
from sparegrid.coordinator.clock import Clock
from sparegrid.coordinator.store.base import Store

log = logging.getLogger("sparegrid.coordinator.sweeper")

DAY = 86400.0
CANDIDATES = 20_000  # blobs weighed against one walk of the live jobs
COLLECT_STEP = 200  # blobs deleted in one step (a rename each: ~0.1 ms on the dev VM)


@dataclass
class SweepConfig:
    interval: float = 300.0  # seconds between sweeps
    upload_expiry: float = DAY  # an unfinished upload untouched this long is deleted
    blob_retention: float = 3 * DAY  # see the module docstring
    node_expiry: float = DAY  # a node that never worked, unseen this long, is forgotten
    page: int = 1000  # blobs, tasks or nodes read in one step


@dataclass
class Swept:
    partials: int = 0
    blobs: int = 0
    blob_bytes: int = 0
    nodes: int = 0


class Sweeper:
    def __init__(
        self,
        store: Store,
        blobs: BlobStore,
        clock: Clock,
        config: SweepConfig,
        connected: Callable[[], set[str]],
        nodes_deleted: Callable[[], None] = lambda: None,
        held: Callable[[], set[str]] = set,
    ) -> None:
        self._store = store
        self._blobs = blobs
        self._clock = clock
        self.config = config
        self._connected = connected  # ids of nodes with a session now
        self._nodes_deleted = nodes_deleted  # e.g. reload what services keep of nodes
        self._held = held  # digests submits and retries in flight hold (submit.py): kept

    def expire_partials(self, files: list[tuple[str, str, float]]) -> int:
        """Deletes unfinished uploads untouched for --upload-expiry, found by their record
        or, in `files` (BlobStore.partials(), read earlier), by their file; never one being
        received, nor one whose file was written since."""
        cutoff = self._clock.now() - self.config.upload_expiry
        blobs = self._blobs
        stale = set(self._store.stale_partials(cutoff, limit=self.config.page))
        stale |= {(uploader, digest) for uploader, digest, at in files if at < cutoff}
        stale = {
            key for key in stale - blobs.uploading if (blobs.partial_mtime(*key) or 0.0) < cutoff
        }
        if not stale:
            return 0
        self._store.drop_partials(sorted(stale))
        for uploader, digest in stale:
            blobs.drop_partial(uploader, digest)
        log.info("deleted %d unfinished upload(s) untouched for --upload-expiry", len(stale))
        return len(stale)

    def adopt(self, files: list[tuple[str, int, float]]) -> int:
        """Records stored blob files (BlobStore.stored()) the store does not know, with
        their file's time as their last use: blobs stored before uploads were recorded."""
        adopted = self._store.adopt_blobs(files)
        if adopted:
            log.info("recorded %d stored blob(s) found on disk", adopted)
        return adopted

    def collect_blobs(self, swept: Swept) -> Iterator[None]:
        """Deletes blobs unused for the retention that no live job names; yields between
        steps. Counts what it deleted in `swept`."""
        began = self._clock.now()
        cutoff = began - self.config.blob_retention
        store, page = self._store, self.config.page
        candidates = store.stale_blobs(cutoff, limit=CANDIDATES)
        if not candidates:
            return
        live = store.live_jobs(cutoff)
        needed: set[str] = set()
        for job_id, job in live.items():
            needed |= job.inputs
            yield
            for refs in self._task_refs(job_id):
                needed |= refs
                yield
        walked = set(live)
        step = min(page, COLLECT_STEP)
        for start in range(0, len(candidates), step):
            self._collect(dict(candidates[start : start + step]), needed, walked, began, swept)
            yield

    def _task_refs(self, job_id: str) -> Iterator[set[str]]:
        after: int | None = -1
        while after is not None:
            refs, after = self._store.task_blob_refs(job_id, after, self.config.page)
            yield refs

    def _collect(
        self,
        candidates: dict[str, int],
        needed: set[str],
        walked: set[str],
        began: float,
        swept: Swept,
    ) -> None:
        """A deleting step, run at once. A candidate used since the walk began is kept,
        and so is one named by a job that became live meanwhile: a job submitted since
        names blobs through its job-level inputs only (a kind plans its tasks' inputs from
        them; outputs come later, each a fresh use), a job retried since is walked now, and
        so is one held by a submit in flight: checked, and not yet written as a live job."""
        store = self._store
        cutoff = began - self.config.blob_retention
        with store.transaction():
            still = set(store.blob_uses(list(candidates), before=cutoff))
            for job_id, job in store.live_jobs(cutoff).items():
                if job_id in walked:
                    continue
                walked.add(job_id)
                needed |= job.inputs
                if job.created_at < began:
                    for refs in self._task_refs(job_id):
                        needed |= refs
            needed |= self._held()
            doomed = sorted(d for d in candidates if d in still and d not in needed)
            inline = store.drop_blobs(doomed)
        self._blobs.discard([d for d in doomed if d not in inline])
        swept.blobs += len(doomed)
        swept.blob_bytes += sum(candidates[d] for d in doomed)
        if doomed:
            log.info("collected %d blob(s) no job needs", len(doomed))

    def expire_charges(self) -> int:
        """Uploads older than the retention stop counting against their holder."""
        return self._store.expire_charges(self._clock.now() - self.config.blob_retention)

    def prune_nodes(self) -> int:
        """Forgets nodes unseen for --node-expiry that never worked and are not connected."""
        cutoff = self._clock.now() - self.config.node_expiry
        store = self._store
        with store.transaction():
            idle = store.idle_nodes(cutoff, limit=self.config.page)
            connected = self._connected()
            doomed = [node_id for node_id in idle if node_id not in connected]
            store.delete_nodes(doomed)
        if doomed:
            self._nodes_deleted()
            log.info("forgot %d node(s) that never worked", len(doomed))
        return len(doomed)
