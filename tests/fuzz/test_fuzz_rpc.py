"""Every RPC's requests, fuzzed against a real coordinator (grpc.aio on 127.0.0.1:0,
SQLite): whatever a caller sends, the answer is a refusal with a status of its own or a
success, never INTERNAL or UNKNOWN (a crash), and the ledger still balances."""

from collections.abc import Iterator

import grpc
import pytest
from hypothesis import given, settings

from sparegrid.v1 import admin_pb2, worker_pb2
from tests.fuzz.harness import (
    BROKEN,
    CALLERS,
    Coordinator,
    Rpc,
    request_lists,
    rpcs,
    session_sequences,
    started,
)
from tests.fuzz.protos import messages

UNARY = [r for r in rpcs() if r.method != "Session"]


@pytest.fixture(scope="module")
def coordinator() -> Iterator[Coordinator]:
    server, tmp = started()
    try:
        yield server
        check = server.stubs["AdminService"].CheckLedger(
            admin_pb2.CheckLedgerRequest(), metadata=server.auth("admin"), timeout=30
        )
        assert check.balanced, list(check.problems)
    finally:
        server.stop()
        tmp.cleanup()


def fuzz_rpc(server: Coordinator, rpc: Rpc) -> None:
    requests = request_lists(server, rpc)

    @settings(settings.get_profile("fuzz"))
    @given(requests, CALLERS)
    def run(sent: list[object], who: str) -> None:
        status = server.call(rpc, sent, who)  # type: ignore[arg-type]
        assert status not in BROKEN, f"{rpc.service}.{rpc.method} answered {status}"

    run()


@pytest.mark.parametrize("rpc", UNARY, ids=[f"{r.service}.{r.method}" for r in UNARY])
def test_fuzz_rpc(coordinator: Coordinator, rpc: Rpc) -> None:
    fuzz_rpc(coordinator, rpc)


def test_fuzz_worker_hello(coordinator: Coordinator) -> None:
    """A session that starts with any Hello at all."""

    @settings(settings.get_profile("fuzz"))
    @given(messages(worker_pb2.Hello.DESCRIPTOR, coordinator.known))
    def run(hello: worker_pb2.Hello) -> None:
        status = coordinator.session([], hello=hello)
        assert status not in BROKEN, f"Session answered {status}"

    run()


@pytest.mark.parametrize("answer", [False, True], ids=["any-lease", "real-lease"])
def test_fuzz_worker_session(coordinator: Coordinator, answer: bool) -> None:
    """A node that registers properly, then sends anything: credit for devices it lacks,
    results signed with its key whose statements and outputs are junk (or name a task it
    really holds), failures of attempts that are not its own, messages out of order."""
    sequences = session_sequences(coordinator)

    @settings(settings.get_profile("fuzz"))
    @given(sequences)
    def run(sent: list[worker_pb2.WorkerMessage]) -> None:
        status = coordinator.session(sent, answer=answer)
        assert status not in BROKEN, f"Session answered {status}"
        assert status != grpc.StatusCode.DEADLINE_EXCEEDED, "the session hung"

    run()
