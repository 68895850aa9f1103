"""Invariants of the trust layer under a randomised adversarial fleet (services layer):
no credit without validation, the ledger balances, every accepted receipt verifies."""

import os
import random
from pathlib import Path

import pytest

from sparegrid.coordinator.app import App
from sparegrid.coordinator.domain import ReplicaState, TaskState, node_account
from sparegrid.coordinator.services.jobs import JobSpec
from sparegrid.coordinator.services.reputation import TrustConfig
from sparegrid.v1 import common_pb2
from sparegrid.wire import Signer, sha256_hex
from sparegrid.wire.receipt import sign_batch, verify_countersignature, verify_receipt
from tests.coordinator.helpers import FakeNode, make_app, make_client

RIGHT = b"right"
BEHAVIOURS = ["honest"] * 6 + ["wrong", "flaky", "lazy", "forger", "claimer"]


def output(behaviour: str, rng: random.Random) -> bytes:
    if behaviour == "wrong" or (behaviour == "flaky" and rng.random() < 0.2):
        return os.urandom(6)
    if behaviour == "lazy":
        return b""
    return RIGHT


def play(app: App, fleet: list[tuple[FakeNode, str]], rng: random.Random, rounds: int) -> None:
    for _ in range(rounds):
        rng.shuffle(fleet)
        for node, _ in fleet:
            if node.id in app.scheduler.sessions:
                app.scheduler.grant(node.id, 0, rng.randint(0, 2))
        app.scheduler.dispatch()
        taken = {node.id: node.sink.take() for node, _ in fleet}
        for node, behaviour in fleet:
            items = taken[node.id]
            if behaviour == "claimer":  # claims another node's lease as well
                items = items + [i for n, i2 in taken.items() if n != node.id for i in i2][:1]
            if not items:
                continue
            outs = [output(behaviour, rng) for _ in items]
            statements = [node.statement(a, t, o) for (a, t, _), o in zip(items, outs, strict=True)]
            key = Signer.generate() if behaviour == "forger" else node.signer
            inline = {sha256_hex(o): o for o in outs}
            app.intake.results(node.id, statements, sign_batch(key, statements), inline)
        app.clock.advance(5)  # type: ignore[attr-defined]
        app.scheduler.reap()


@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("policy", [(0, 0), (2, 2), (3, 2)])
def test_invariants_hold_against_a_bad_fleet(
    tmp_path: Path, seed: int, policy: tuple[int, int]
) -> None:
    rng = random.Random(seed)
    app = make_app(tmp_path, trust=TrustConfig(warmup=3, floor=0.2))
    app.reputations._rng = random.Random(seed)
    account = make_client(app, credit=10**9)
    fleet = [(FakeNode(app, f"n{i}", owner=f"o{i}"), b) for i, b in enumerate(BEHAVIOURS)]
    for node, _ in fleet:
        node.connect(credit=0)
    params = b'{"tasks": 40, "data": "right"}'
    jobs = [
        app.jobs.submit(
            account,
            JobSpec("echo", params=params, replicas=policy[0], quorum=policy[1], max_attempts=10),
        ).id
        for _ in range(3)
    ]
    play(app, fleet, rng, rounds=80)
    assert app.ledger.check().balanced, app.ledger.check().problems
    paid: dict[str, int] = {}
    for job_id in jobs:
        job = app.store.get_job(job_id)
        assert job is not None
        tasks = app.store.list_tasks(job_id)
        replicas = app.store.get_replicas([t.id for t in tasks])
        for r in replicas:
            if r.state == ReplicaState.VALID:
                paid[r.node_id] = paid.get(r.node_id, 0) + 1
        for task in tasks:
            if task.state != TaskState.SUCCEEDED:
                continue
            receipt = common_pb2.Receipt.FromString(task.receipt)
            assert verify_receipt(receipt).node_id == task.node_id
            validation = verify_countersignature(receipt, app.signer.public_key)
            assert validation.task_id == task.id and task.node_id in validation.agreeing_nodes
            if policy != (0, 0):  # quorum: no wrong result is ever accepted
                assert task.outputs[0].digest == sha256_hex(RIGHT)
    for node, behaviour in fleet:
        credit = app.store.balance(node_account(node.id))
        # no credit without a validated result (echo: 1 credit per result)
        assert credit == paid.get(node.id, 0)
        if behaviour in ("forger", "wrong", "lazy"):
            assert credit == 0
        if behaviour == "honest":
            assert app.reputations.get(node.id).invalid == 0
