"""One simulator process of bench/fleet.py: many simulated workers on one event loop.

Each is a node of its own (its own Ed25519 key and channel) speaking the real protocol
with the worker's own modules: the handshake (`session.connect`), retry hints
(`session.reconnect_delay`), Hello (`messages.hello`), the echo executor, statements
(`messages.statement_bytes`) and one signature per batch (`wire.receipt.sign_batch`).
Its counts go to a JSON status file the driver reads.

    python bench/fleetsim.py --address HOST:PORT --count N --status FILE [--prefetch 2]
"""

import argparse
import asyncio
import contextlib
import json
import random
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import grpc.aio

from sparegrid.v1 import common_pb2, worker_pb2
from sparegrid.wire import Signer, sha256_hex
from sparegrid.wire.receipt import sign_batch
from sparegrid.wire.targets import grpc_target
from sparegrid.worker.executors.base import DeviceRef, ExecTask
from sparegrid.worker.executors.builtin import EchoExecutor
from sparegrid.worker.executors.registry import ExecutorSpec
from sparegrid.worker.node.devices import DeviceInfo
from sparegrid.worker.slots.child.protocol import Outcome, OutputData
from sparegrid.worker.upstream.heartbeat import Cadence
from sparegrid.worker.upstream.messages import hello, message_of, statement_bytes
from sparegrid.worker.upstream.session import (
    KEEPALIVE_OPTIONS,
    Session,
    connect,
    reconnect_delay,
    retry_after,
)

DEVICE = DeviceInfo(index=0, kind="cpu", name="fleet-sim")
ECHO = ExecutorSpec("echo", EchoExecutor.version, "sparegrid.worker.executors.builtin:EchoExecutor")
# as a worker's channel: its keepalive pings (every 11 s) cost the coordinator too
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 64 << 20), *KEEPALIVE_OPTIONS]


# --- one simulator process: many workers on one event loop ---------------------------------


@dataclass
class SimStats:
    registered: int = 0  # workers that got their first Welcome
    connected: int = 0  # sessions open now
    last_registered_at: float = 0.0
    refused: int = 0  # UNAVAILABLE with a retry hint: admission control, retried
    errors: Counter[str] = field(default_factory=Counter)  # other failed handshakes
    results: int = 0  # results acknowledged
    reconnects: int = 0


class SimWorker:
    """One simulated node: the worker's handshake, heartbeats, credit and signed batches."""

    def __init__(self, index: int, sim: "Sim") -> None:
        self.index, self.sim = index, sim
        self.signer = Signer.generate()
        self.node_id = ""
        self.outbox: dict[int, worker_pb2.WorkerMessage] = {}  # batch id -> unacked batch
        self.outbox_attempts: dict[int, list[str]] = {}
        self.next_batch = 1
        self.pending: list[bytes] = []  # statements finished, not yet in a batch
        self.inline: dict[str, bytes] = {}
        self.flush_scheduled = False
        self.session: Session | None = None

    async def run(self) -> None:
        sim, registered, failures = self.sim, False, 0
        while not sim.stopping:
            channel = grpc.aio.insecure_channel(grpc_target(sim.address), options=CHANNEL_OPTIONS)
            delay = 0.0
            try:
                message = worker_pb2.WorkerMessage()
                message.CopyFrom(sim.hello)  # software versions looked up once per process
                message.hello.public_key = self.signer.public_key
                message.hello.node_name = f"sim{self.index}"
                message.hello.running_attempts.extend(
                    sorted(a for ids in self.outbox_attempts.values() for a in ids)
                )
                self.session = await connect(
                    channel, message, self.signer, sim.owner_key(self.index)
                )
                self.node_id = self.session.welcome.node_id
                failures = 0
                if not registered:
                    registered = True
                    sim.stats.registered += 1
                    sim.stats.last_registered_at = time.monotonic()
                else:
                    sim.stats.reconnects += 1
                sim.stats.connected += 1
                try:
                    await self._serve(self.session)
                finally:
                    sim.stats.connected -= 1
            except grpc.aio.AioRpcError as exc:
                if retry_after(exc) is not None:  # refused while busy: the worker's wait
                    sim.stats.refused += 1
                    delay = reconnect_delay(exc, 0.0, sim.rng)
                elif not registered:
                    sim.stats.errors[exc.code().name] += 1
                    sim.details[f"{exc.code().name}: {exc.details()}"[:120]] += 1
            except Exception as exc:  # a failed handshake of any kind is counted, then retried
                if not registered:
                    sim.stats.errors[type(exc).__name__] += 1
            finally:
                self.session = None
                await channel.close()
            if not delay:
                failures += 1
                delay = min(0.5 * 2 ** min(failures, 5), 10.0) * (0.5 + random.random() / 2)
            if not sim.stopping:
                await asyncio.sleep(delay)

    async def _serve(self, session: Session) -> None:
        for message in self.outbox.values():  # resend what was not acknowledged
            session.post(message)
        if self.sim.prefetch:
            credit = worker_pb2.Credit(device_index=0, count=self.sim.prefetch)
            session.post(worker_pb2.WorkerMessage(credit=credit))
        loops = [self._heartbeats(session)]
        if self.sim.churn:
            loops.append(self._cut_later())
        await session.serve(self._on_message, *loops)

    async def _heartbeats(self, session: Session) -> None:
        """The worker's cadence: each interval while it holds a task, the idle one else."""
        cadence = Cadence.asked(session.welcome, None, time.monotonic())
        await asyncio.sleep(random.random() * cadence.busy)  # workers started at different times
        while True:
            if cadence.due(bool(self.outbox or self.pending), time.monotonic()):
                session.post(worker_pb2.WorkerMessage(heartbeat=worker_pb2.Heartbeat()))
            await asyncio.sleep(cadence.busy)

    async def _cut_later(self) -> None:
        low, high = self.sim.churn
        await asyncio.sleep(random.uniform(low, high))
        raise ConnectionResetError("churn: the stream is cut")

    def _on_message(self, message: worker_pb2.CoordinatorMessage) -> None:
        body = message.WhichOneof("body")
        if body == "assign":
            for assignment in message.assign.assignments:
                self._run(assignment)
        elif body == "result_ack":
            ack = message.result_ack
            self.outbox.pop(ack.batch_id, None)
            attempts = self.outbox_attempts.pop(ack.batch_id, [])
            self.sim.stats.results += sum(1 for v in ack.verdicts if v.accepted)
            if attempts and self.session is not None:  # slots freed: credit back
                credit = worker_pb2.Credit(device_index=0, count=len(attempts))
                self.session.post(worker_pb2.WorkerMessage(credit=credit))

    def _run(self, assignment: worker_pb2.Assignment) -> None:
        """Runs the real echo executor and queues the signed statement for the next batch."""
        task = ExecTask(assignment.params, {}, Path("."), DeviceRef(0, "cpu", DEVICE.name))
        outputs = EchoExecutor().run(task)
        data = [OutputData(o.name, sha256_hex(o.data), len(o.data), o.data) for o in outputs]
        outcome = Outcome(0, outputs=data, duration_us=50)
        self.pending.append(statement_bytes(assignment, self.node_id, DEVICE, ECHO, outcome))
        self.inline.update({o.digest: o.data for o in data})
        if not self.flush_scheduled:
            self.flush_scheduled = True
            asyncio.get_running_loop().call_later(0.005, self._flush)

    def _flush(self) -> None:
        """One signed batch of what finished in the last few milliseconds (the batcher's
        window), kept until acknowledged."""
        self.flush_scheduled = False
        if not self.pending:
            return
        statements, self.pending = self.pending, []
        attempts = [common_pb2.ResultStatement.FromString(s).attempt_id for s in statements]
        batch_id, self.next_batch = self.next_batch, self.next_batch + 1
        results = worker_pb2.Results(
            batch_id=batch_id,
            statements=statements,
            signature=sign_batch(self.signer, statements),
            inline_outputs=self.inline,
        )
        self.inline = {}
        message = message_of(results)
        self.outbox[batch_id] = message
        self.outbox_attempts[batch_id] = attempts
        if self.session is not None:
            self.session.post(message)


class Sim:
    def __init__(self, args: argparse.Namespace) -> None:
        self.address = args.address
        self.prefetch = args.prefetch
        self.churn = tuple(args.churn) if args.churn else ()
        self.keys = json.loads(Path(args.keys).read_text()) if args.keys else []
        self.first = args.first
        self.stats = SimStats()
        self.rng = random.Random()
        self.details: Counter[str] = Counter()  # failed handshakes, by status and message
        self.hello = hello(b"", "", [DEVICE], [ECHO], [])
        self.stopping = False
        self.status = Path(args.status)

    def owner_key(self, index: int) -> str:
        return self.keys[index - self.first] if self.keys else ""

    async def main(self, count: int, ramp: float) -> None:
        workers = [SimWorker(self.first + i, self) for i in range(count)]
        tasks = []
        started = time.monotonic()
        for i, worker in enumerate(workers):
            tasks.append(asyncio.create_task(worker.run()))
            if ramp:  # all at once unless asked to spread the starts
                await asyncio.sleep(max(0.0, started + ramp * i / count - time.monotonic()))
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        while not stop.is_set():
            self.write_status(started)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)
        self.stopping = True
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.write_status(started)

    def write_status(self, started: float) -> None:
        s = self.stats
        status = {
            "registered": s.registered,
            "connected": s.connected,
            "register_seconds": (s.last_registered_at - started) if s.registered else None,
            "refused": s.refused,
            "errors": dict(s.errors),
            "results": s.results,
            "reconnects": s.reconnects,
            "error_details": dict(self.details.most_common(5)),
            "at": time.time(),
        }
        tmp = self.status.with_suffix(".tmp")
        tmp.write_text(json.dumps(status))
        tmp.replace(self.status)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--address", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--prefetch", type=int, default=0)
    parser.add_argument("--churn", type=float, nargs=2)
    parser.add_argument("--keys", default="")
    parser.add_argument("--status", required=True)
    parser.add_argument("--ramp", type=float, default=0.0)
    args = parser.parse_args(argv)
    asyncio.run(Sim(args).main(args.count, args.ramp))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
