"""Signed result batches kept on disk until the coordinator acknowledges them.

Every Results or Failures batch is written (fsync, atomic rename) to data_dir/outbox/
before it is sent, and deleted when its ResultAck arrives; after a reconnect or a restart
the unacknowledged ones are sent again, oldest first. Outputs too large to travel inline
wait in outbox/blobs/ until no pending batch names them. Batch ids come from a counter in
data_dir/batch_seq, reserved in blocks, so a restart never reuses one.
"""

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from google.protobuf.message import DecodeError

from sparegrid.v1 import worker_pb2
from sparegrid.wire.receipt import decode_statement
from sparegrid.worker.fsutil import write_atomic

_log = logging.getLogger("sparegrid.worker.upstream.outbox")
_ID_BLOCK = 1024
_SUFFIX = ".batch"


@dataclass(frozen=True)
class OutboxEntry:
    batch_id: int
    message: worker_pb2.WorkerMessage
    blobs: tuple[str, ...]  # digests to upload before the batch is sent
    path: Path


def batch_id_of(message: worker_pb2.WorkerMessage) -> int:
    body = message.WhichOneof("body")
    if body == "results":
        return message.results.batch_id
    if body == "failures":
        return message.failures.batch_id
    raise ValueError(f"an outbox holds Results and Failures, not {body}")


def uploaded_digests(message: worker_pb2.WorkerMessage) -> tuple[str, ...]:
    """Digests of outputs that travel as blobs rather than inline."""
    return tuple(sorted(output_attempts(message)))


def output_attempts(message: worker_pb2.WorkerMessage) -> dict[str, list[str]]:
    """Per output that travels as a blob rather than inline, the attempts whose results
    name it: the coordinator takes a blob as an attempt's output only if it was uploaded
    for that attempt."""
    if message.WhichOneof("body") != "results":
        return {}
    inline = message.results.inline_outputs
    attempts: dict[str, list[str]] = {}
    for data in message.results.statements:
        statement = decode_statement(data)
        for ref in statement.outputs:
            if ref.digest not in inline:
                attempts.setdefault(ref.digest, []).append(statement.attempt_id)
    return attempts


class Outbox:
    def __init__(self, data_dir: Path) -> None:
        self.root = data_dir / "outbox"
        self.blob_dir = self.root / "blobs"
        self._seq_path = data_dir / "batch_seq"
        self._entries: dict[int, OutboxEntry] = {}
        self._next_id = 1
        self._reserved_to = 1
        self._changed = asyncio.Event()

    def load(self) -> int:
        """Reads unacknowledged batches and the id counter; returns how many are pending."""
        self.blob_dir.mkdir(parents=True, exist_ok=True)
        for path in sorted(self.root.glob(f"*{_SUFFIX}")):
            self._load_entry(path)
        stored = self._stored_seq()
        self._next_id = self._reserved_to = max([stored, *(i + 1 for i in self._entries)])
        return len(self._entries)

    def _stored_seq(self) -> int:
        """The counter in batch_seq; when that file is damaged (empty or not a number
        after a crash or a full disk), the highest batch id the outbox names plus one, and
        the file is written again. Ids the outbox no longer names were acknowledged: the
        coordinator keys nothing on them, so only a pending batch's id must not recur."""
        try:
            text = self._seq_path.read_text(encoding="ascii", errors="replace").strip()
        except FileNotFoundError:
            return 1
        if text.isascii() and text.isdigit() and len(text) <= 19:
            return int(text)
        names = [p.stem for p in self.root.glob("*") if p.suffix in (_SUFFIX, ".corrupt")]
        recovered = 1 + max((int(n) for n in names if n.isascii() and n.isdigit()), default=0)
        _log.warning(
            "%s held %r, not a batch counter; going on from the outbox's highest batch id "
            "plus one (%d)",
            self._seq_path,
            text[:40],
            recovered,
        )
        write_atomic(self._seq_path, str(recovered).encode())
        return recovered

    def _load_entry(self, path: Path) -> None:
        message = worker_pb2.WorkerMessage()
        try:
            message.ParseFromString(path.read_bytes())
            entry = OutboxEntry(batch_id_of(message), message, uploaded_digests(message), path)
        except (DecodeError, ValueError, OSError) as exc:
            _log.error("outbox file %s is unreadable (%s); moving it aside", path, exc)
            path.rename(path.with_suffix(".corrupt"))
            return
        self._entries[entry.batch_id] = entry

    def next_batch_id(self) -> int:
        if self._next_id >= self._reserved_to:  # reserved once on disk (a full one refuses)
            reserved = self._next_id + _ID_BLOCK
            write_atomic(self._seq_path, str(reserved).encode())
            self._reserved_to = reserved
        batch_id = self._next_id
        self._next_id += 1
        return batch_id

    def blob_path(self, digest: str) -> Path:
        return self.blob_dir / digest

    def _write(self, message: worker_pb2.WorkerMessage, blobs: Mapping[str, bytes]) -> OutboxEntry:
        for digest, data in blobs.items():
            if not self.blob_path(digest).exists():
                write_atomic(self.blob_path(digest), data)
        batch_id = batch_id_of(message)
        path = self.root / f"{batch_id:020d}{_SUFFIX}"
        write_atomic(path, message.SerializeToString())
        return OutboxEntry(batch_id, message, tuple(sorted(blobs)), path)

    async def put(self, message: worker_pb2.WorkerMessage, blobs: Mapping[str, bytes]) -> None:
        """Makes the batch durable; only then may it be sent."""
        entry = await asyncio.to_thread(self._write, message, blobs)
        self._entries[entry.batch_id] = entry
        self._notify()

    def ack(self, batch_id: int) -> bool:
        """Drops an acknowledged batch; False if it was not pending."""
        entry = self._entries.pop(batch_id, None)
        if entry is None:
            return False
        entry.path.unlink(missing_ok=True)
        still_needed = {d for e in self._entries.values() for d in e.blobs}
        for digest in set(entry.blobs) - still_needed:
            self.blob_path(digest).unlink(missing_ok=True)
        # No fsync: if the deletion is lost in a crash, the batch is resent, which is harmless.
        self._notify()
        return True

    def attempt_ids(self) -> list[str]:
        """Attempts whose outcome waits here: the coordinator must keep their leases."""
        ids: list[str] = []
        for entry in self.pending():
            message = entry.message
            if message.WhichOneof("body") == "results":
                ids += [decode_statement(d).attempt_id for d in message.results.statements]
            else:
                ids += [f.attempt_id for f in message.failures.failures]
        return ids

    def pending(self) -> list[OutboxEntry]:
        return [self._entries[i] for i in sorted(self._entries)]

    def __len__(self) -> int:
        return len(self._entries)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def change_event(self) -> asyncio.Event:
        """An event set at the next change; take it before looking at `pending`."""
        return self._changed

    async def wait_empty(self) -> None:
        while self._entries:
            await self.change_event().wait()
