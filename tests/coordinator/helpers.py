"""A coordinator on the in-memory store with a fake clock, and fake nodes that sign."""

import json
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sparegrid.coordinator.app import App
from sparegrid.coordinator.clock import FakeClock
from sparegrid.coordinator.domain import Account, Attempt, Device, Node, Task
from sparegrid.coordinator.services.canaries import CanaryConfig
from sparegrid.coordinator.services.jobs import JobSpec
from sparegrid.coordinator.services.reputation import TrustConfig
from sparegrid.coordinator.services.results import Verdict
from sparegrid.coordinator.settings import Settings
from sparegrid.coordinator.store.memory import MemoryStore
from sparegrid.v1 import common_pb2
from sparegrid.wire import Signer, sha256_hex
from sparegrid.wire.receipt import sign_batch


@dataclass
class FakeSink:
    assigned: list[tuple[Attempt, Task, str]] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    totals: list[int] = field(default_factory=list)  # each Credited total, in order
    closed: bool = False

    def assign(self, items: list[tuple[Attempt, Task, str]]) -> None:
        self.assigned.extend(items)

    def cancel(self, attempt_ids: list[str], reason: str) -> None:
        self.cancelled.extend(attempt_ids)

    def credited(self, total: int) -> None:
        self.totals.append(total)

    def close(self) -> None:
        self.closed = True

    def take(self) -> list[tuple[Attempt, Task, str]]:
        items, self.assigned = self.assigned, []
        return items


class FakeNode:
    """Registers like a worker and answers its assignments with signed results."""

    def __init__(
        self,
        app: App,
        name: str,
        kinds: tuple[str, ...] = ("echo", "checksum"),
        device: Device | None = None,
        owner: str | None = None,
        signer: Signer | None = None,
    ) -> None:
        """`owner`: the account the node proves; by default one of its own, so that each
        fake node is a vetted owner of its own; "" for a node without an owner account.
        `signer`: its key (a fixed one keeps a generated test's node ids the same)."""
        self.app = app
        self.signer = signer or Signer.generate()
        self.id = self.signer.node_id
        if owner is None:
            owner = f"owner-{self.id}"
        if owner and app.store.get_account_by_name(owner) is None:
            app.accounts.create(owner, 0)  # an owner is an account, as a worker proves
        self.sink = FakeSink()
        self.node = Node(
            id=self.id,
            public_key=self.signer.public_key,
            name=name,
            devices=[device or Device(index=0, kind="cpu", name="test cpu", memory_bytes=1 << 30)],
            executors={k: "1" for k in kinds},
            owner=owner,
        )

    def connect(
        self,
        credit: int = 10,
        running: list[str] | None = None,
        taking_work: bool = True,
        budget: float = 0.0,
    ) -> tuple[list[str], list[str]]:
        """Registers and grants `credit` per device. With no credit, the node still counts
        as taking work (a checker), as a worker whose credit is spent does, unless
        `taking_work` is False (a session that never grants any). `budget`: the seconds
        it says it lets a task run (0: not said)."""
        self.node.last_seen = self.app.clock.now()  # as a Hello records it
        self.app.store.upsert_node(self.node)
        out = self.app.scheduler.connect(self.node, self.sink, running or [], budget)
        session = self.app.scheduler.sessions[self.id]
        for device in self.node.devices:
            self.app.scheduler.grant(self.id, device.index, credit)
            if taking_work:
                session.granted.add(device.index)
        self.app.scheduler.dispatch()
        return out

    def statement(self, attempt: Attempt, task: Task, output: bytes) -> bytes:
        return common_pb2.ResultStatement(
            job_id=task.job_id,
            task_id=task.id,
            attempt_id=attempt.id,
            node_id=self.id,
            inputs=[
                common_pb2.InputRef(name=r.name, digest=r.digest, size=r.size) for r in task.inputs
            ],
            outputs=[common_pb2.OutputRef(name="out", digest=sha256_hex(output), size=len(output))],
            executor="echo",
            executor_version="1",
        ).SerializeToString()

    def answer(
        self,
        items: list[tuple[Attempt, Task, str]],
        output: bytes = b"ok",
        signer: Signer | None = None,
    ) -> list[Verdict]:
        statements = [self.statement(a, t, output) for a, t, _ in items]
        signature = sign_batch(signer or self.signer, statements)
        return self.app.intake.results(self.id, statements, signature, {sha256_hex(output): output})


# No cross-checks: the adaptive policy accepts every first result. For tests of leasing
# and results intake; the verification tests pass a TrustConfig of their own.
NO_CHECKS = TrustConfig(warmup=0, floor=0.0)


def make_app(tmp_path: Path, **settings: object) -> App:
    settings.setdefault("trust", NO_CHECKS)
    settings.setdefault("canaries", CanaryConfig(rate=0.0))
    app = App(MemoryStore(), Settings(data_dir=tmp_path, **settings), clock=FakeClock())  # type: ignore[arg-type]
    app.start_services()
    return app


def make_client(app: App, name: str = "alice", credit: int = 1000) -> Account:
    account, _ = app.accounts.create(name, credit)
    return account


def echo(app: App, account: Account, tasks: int, **extra: object) -> str:
    params = json.dumps({"tasks": tasks, "data": "hi", **extra}).encode()
    return app.jobs.submit(account, JobSpec(kind="echo", params=params)).id


def png(image: np.ndarray, filters: tuple[int, ...] = (0, 1, 2, 3, 4)) -> bytes:
    """A PNG of an 8-bit RGB image, each row with one of `filters` in turn."""
    height, width, channels = image.shape
    rows = image.astype(np.int32).reshape(height, width * channels)
    raw = bytearray()
    prior = np.zeros(width * channels, dtype=np.int32)
    for y in range(height):
        kind = filters[y % len(filters)]
        line = rows[y]
        left = np.concatenate([np.zeros(channels, dtype=np.int32), line[:-channels]])
        up_left = np.concatenate([np.zeros(channels, dtype=np.int32), prior[:-channels]])
        if kind == 0:
            pred = np.zeros_like(line)
        elif kind == 1:
            pred = left
        elif kind == 2:
            pred = prior
        elif kind == 3:
            pred = (left + prior) // 2
        else:
            p = left + prior - up_left
            pa, pb, pc = abs(p - left), abs(p - prior), abs(p - up_left)
            pred = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, prior, up_left))
        raw.append(kind)
        raw += ((line - pred) & 0xFF).astype(np.uint8).tobytes()
        prior = line

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(bytes(raw)))
        + chunk(b"IEND", b"")
    )
