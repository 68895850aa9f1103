"""The worker against a fake coordinator: registration, results, credit, inputs, uploads."""

import asyncio
import datetime
import hashlib
import ipaddress
import random
from pathlib import Path

import grpc
import grpc.aio
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sparegrid.wire import REGISTER_TAG, node_id_for, verify
from sparegrid.wire.clock import SystemClock
from sparegrid.wire.metadata import RETRY_AFTER_KEY
from sparegrid.wire.receipt import decode_statement, verify_batch
from sparegrid.worker.testing.coordinator import FakeCoordinator, is_kind, statement_attempts
from sparegrid.worker.testing.harness import assignment, make_config, running_worker, wait_until
from sparegrid.worker.upstream.session import MAX_RETRY_HINT, reconnect_delay


async def test_registration_signature_verifies(
    tmp_path: Path, coordinator: FakeCoordinator
) -> None:
    async with running_worker(make_config(tmp_path, coordinator.address)) as (worker, _):
        session = await coordinator.session()
        hello = session.hello
        assert hello.node_name == "test-node"
        assert node_id_for(hello.public_key) == worker.node_id
        assert {e.name for e in hello.executors} >= {"echo", "checksum"}
        assert set(hello.software) >= {"sparegrid", "python"}
        assert [d.name for d in hello.devices] == ["fake-0"]
        signed = session.nonce + session.session_id.encode()
        verify(hello.public_key, REGISTER_TAG, signed, session.signature)


async def test_echo_and_checksum_results_are_signed(
    tmp_path: Path, coordinator: FakeCoordinator
) -> None:
    data = b"0123456789" * 100
    digest = coordinator.put_blob(data)
    async with running_worker(make_config(tmp_path, coordinator.address)) as (worker, _):
        session = await coordinator.session()
        session.assign(
            assignment("a1", params={"data": "hello"}),
            assignment(
                "a2", "checksum", {"offset": 10, "length": 20}, {"data": (digest, len(data))}
            ),
        )
        await session.wait_statements(2)
    for message in session.of_kind("results"):
        results = message.results
        verify_batch(session.hello.public_key, list(results.statements), results.signature)
    by_attempt = {s.attempt_id: s for s in map(decode_statement, session.statements())}
    echo, checksum = by_attempt["a1"], by_attempt["a2"]
    assert (echo.task_id, echo.job_id, echo.node_id) == ("task-a1", "job-1", worker.node_id)
    assert echo.outputs[0].name == "out"
    assert echo.outputs[0].digest == hashlib.sha256(b"hello").hexdigest()
    assert (echo.executor, echo.executor_version) == ("echo", "1.0")
    expected = hashlib.sha256(data[10:30]).hexdigest().encode()
    assert checksum.outputs[0].digest == hashlib.sha256(expected).hexdigest()
    assert [(i.name, i.digest) for i in checksum.inputs] == [("data", digest)]
    assert checksum.metrics.device_name == "fake-0"
    inline = {k: v for m in session.of_kind("results") for k, v in m.results.inline_outputs.items()}
    assert inline[checksum.outputs[0].digest] == expected


async def test_quick_results_share_one_signed_batch(
    tmp_path: Path, coordinator: FakeCoordinator
) -> None:
    config = make_config(tmp_path, coordinator.address, prefetch=20, batch_window=0.05)
    async with running_worker(config):
        session = await coordinator.session()
        session.assign(*(assignment(f"q{i}") for i in range(20)))
        statements = await session.wait_statements(20)
    assert sorted(statement_attempts(statements)) == sorted(f"q{i}" for i in range(20))
    batches = session.of_kind("results")
    assert len(batches) < 20
    assert max(len(m.results.statements) for m in batches) > 1
    assert len({m.results.batch_id for m in batches}) == len(batches)


async def test_credit_per_device_and_per_finished_task(
    tmp_path: Path, coordinator: FakeCoordinator
) -> None:
    config = make_config(tmp_path, coordinator.address, prefetch=3)
    async with running_worker(config, devices=2):
        session = await coordinator.session()
        await session.wait_for(is_kind("credit"), count=2)
        assert (session.credit(0), session.credit(1)) == (3, 3)
        session.assign(assignment("c1", device=1), assignment("c2", device=1))
        await session.wait_statements(2)
        # one more credit per finished task; tasks finishing together share one Credit message
        await wait_until(lambda: session.credit(1) == 5)
        assert session.credit(0) == 3
        regrants = [m.credit for m in session.of_kind("credit")[2:]]
        assert {c.device_index for c in regrants} == {1} and 1 <= len(regrants) <= 2


async def test_input_downloaded_once(tmp_path: Path, coordinator: FakeCoordinator) -> None:
    data = b"x" * 3_000_000
    digest = coordinator.put_blob(data)
    inputs = {"data": (digest, len(data))}
    async with running_worker(make_config(tmp_path, coordinator.address, prefetch=4)):
        session = await coordinator.session()
        session.assign(
            *(assignment(f"d{i}", "checksum", {"offset": i, "length": 5}, inputs) for i in range(4))
        )
        await session.wait_statements(4)
    assert coordinator.downloads == [(digest, 0)]
    cached = tmp_path / "cache" / "sha256" / digest[:2] / digest
    assert cached.read_bytes() == data


async def test_wrong_blob_content_fails_the_task(
    tmp_path: Path, coordinator: FakeCoordinator
) -> None:
    digest = hashlib.sha256(b"the real content").hexdigest()
    coordinator.blobs[digest] = b"something else"
    async with running_worker(make_config(tmp_path, coordinator.address)):
        session = await coordinator.session()
        session.assign(
            assignment("w1", "checksum", {"offset": 0, "length": 1}, {"data": (digest, 16)})
        )
        [failure] = await session.wait_failures(1)
        assert (failure.attempt_id, failure.code) == ("w1", "INPUT_DIGEST_MISMATCH")
        session.assign(assignment("w2"))
        assert statement_attempts(await session.wait_statements(1)) == ["w2"]
    assert not (tmp_path / "cache" / "sha256" / digest[:2] / digest).exists()


async def test_large_output_is_uploaded_before_the_batch(
    tmp_path: Path, coordinator: FakeCoordinator
) -> None:
    big = "b" * 100_000
    async with running_worker(make_config(tmp_path, coordinator.address)):
        session = await coordinator.session()
        session.assign(assignment("big", params={"data": big}), assignment("small"))
        statements = await session.wait_statements(2)
        # once acknowledged, the uploaded output leaves the outbox
        await wait_until(lambda: not list((tmp_path / "outbox" / "blobs").iterdir()))
    digest = hashlib.sha256(big.encode()).hexdigest()
    assert coordinator.uploads == [digest]
    assert coordinator.blobs[digest] == big.encode()
    inline = {k for m in session.of_kind("results") for k in m.results.inline_outputs}
    assert digest not in inline
    outputs = {decode_statement(s).attempt_id: decode_statement(s).outputs[0] for s in statements}
    assert (outputs["big"].digest, outputs["big"].size) == (digest, 100_000)


async def test_unknown_kind_and_bad_params_fail_cleanly(
    tmp_path: Path, coordinator: FakeCoordinator
) -> None:
    async with running_worker(make_config(tmp_path, coordinator.address)):
        session = await coordinator.session()
        session.assign(
            assignment("u1", kind="render"),
            assignment("u2", params={"data": "x", "sleep_ms": -1}),
            assignment("u3", device=7),
        )
        failures = {f.attempt_id: f for f in await session.wait_failures(3)}
    assert (failures["u1"].code, failures["u1"].retryable) == ("UNKNOWN_KIND", True)
    assert (failures["u2"].code, failures["u2"].retryable) == ("BAD_PARAMS", False)
    assert "sleep_ms" in failures["u2"].message
    assert failures["u3"].code == "UNKNOWN_DEVICE"


async def test_heartbeats_follow_the_interval(tmp_path: Path, coordinator: FakeCoordinator) -> None:
    coordinator.heartbeat_seconds = 0.05
    async with running_worker(make_config(tmp_path, coordinator.address)):
        session = await coordinator.session()
        await session.wait_for(is_kind("heartbeat"), count=3)


async def test_a_worker_holding_no_task_heartbeats_at_the_idle_interval(
    tmp_path: Path, coordinator: FakeCoordinator
) -> None:
    coordinator.heartbeat_seconds, coordinator.idle_heartbeat_seconds = 0.02, 0.4
    async with running_worker(make_config(tmp_path, coordinator.address)):
        session = await coordinator.session()
        await asyncio.sleep(1.0)
        idle = len(session.of_kind("heartbeat"))
        assert 1 <= idle <= 3  # every 0.4 s, not every 0.02 s (50)
        # a task held renews its lease at every tick
        session.assign(assignment("slow", params={"data": "x", "sleep_ms": 600}))
        await session.wait_statements(1)
        busy = len(session.of_kind("heartbeat")) - idle
    assert busy >= 10  # about 30 in 0.6 s


async def test_interrupted_input_download_resumes(
    tmp_path: Path, coordinator: FakeCoordinator
) -> None:
    data = bytes(range(256)) * 10_000  # 2.5 MiB: three chunks
    digest = coordinator.put_blob(data)
    coordinator.fail_download_after[digest] = 1 << 20
    async with running_worker(make_config(tmp_path, coordinator.address)):
        session = await coordinator.session()
        inputs = {"data": (digest, len(data))}
        session.assign(assignment("r1", "checksum", {"offset": 0, "length": len(data)}, inputs))
        [statement] = await session.wait_statements(1)
    assert coordinator.downloads == [(digest, 0), (digest, 1 << 20)]
    expected = hashlib.sha256(hashlib.sha256(data).hexdigest().encode()).hexdigest()
    assert decode_statement(statement).outputs[0].digest == expected


async def test_tls_with_a_private_ca(tmp_path: Path) -> None:
    ca_pem, key_pem, cert_pem = make_tls()
    (tmp_path / "ca.pem").write_bytes(ca_pem)
    fake = FakeCoordinator()
    await fake.start(tls=(key_pem, cert_pem))
    try:
        config = make_config(tmp_path / "w", fake.address, tls_ca=tmp_path / "ca.pem")
        async with running_worker(config):
            session = await fake.session()
            session.assign(assignment("secure"))
            assert statement_attempts(await session.wait_statements(1)) == ["secure"]
    finally:
        await fake.stop()


def make_tls() -> tuple[bytes, bytes, bytes]:
    """A CA certificate, and a key and certificate it signed for 127.0.0.1 (all PEM)."""
    now = datetime.datetime.now(datetime.UTC)

    def cert(
        subject: str,
        key: ec.EllipticCurvePrivateKey,
        issuer: str,
        signer: ec.EllipticCurvePrivateKey,
        ca: bool,
    ) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            san = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return builder.sign(signer, hashes.SHA256())

    ca_key, server_key = (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP256R1()),
    )
    ca_cert = cert("test ca", ca_key, "test ca", ca_key, ca=True)
    server_cert = cert("127.0.0.1", server_key, "test ca", ca_key, ca=False)
    key_pem = server_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    pem = serialization.Encoding.PEM
    return ca_cert.public_bytes(pem), key_pem, server_cert.public_bytes(pem)


class LinkClock(SystemClock):
    """Real sleeps, but monotonic time the test moves: the round trip and task times are
    whatever the test says they were."""

    def __init__(self) -> None:
        self.t = 1000.0

    def monotonic(self) -> float:
        return self.t


async def test_default_window_grows_to_cover_a_slow_link_for_tiny_tasks(
    tmp_path: Path, coordinator: FakeCoordinator
) -> None:
    clock = LinkClock()
    async with running_worker(make_config(tmp_path, coordinator.address), clock=clock):
        session = await coordinator.session()
        await session.wait_for(is_kind("credit"))
        assert session.credit(0) == 2  # nothing measured yet: a small start
        clock.t += 0.3  # the assignments arrive a 300 ms round trip after the grant
        session.assign(assignment("t0"), assignment("t1"))
        await session.wait_statements(2)  # tiny tasks: no time passes on the device
        await wait_until(lambda: session.credit(0) >= 100)  # the window opened wide
    # pinned, the same link leaves the window where the volunteer set it
    pinned = make_config(tmp_path / "pinned", coordinator.address, prefetch=2)
    async with running_worker(pinned, clock=clock):
        session = await coordinator.session(2)
        await session.wait_for(is_kind("credit"))
        clock.t += 0.3
        session.assign(assignment("p0"), assignment("p1"))
        await session.wait_statements(2)
        await wait_until(lambda: session.credit(0) == 4)
        assert session.credit(0) == 4


def test_a_retry_hint_is_obeyed_up_to_a_minute() -> None:
    """A coordinator that tells its workers to come back in 759 s (as a flood once made
    it do) keeps them away for at most a minute and a half (a minute, with jitter)."""

    def refused(seconds: float) -> grpc.aio.AioRpcError:
        trailers = grpc.aio.Metadata((RETRY_AFTER_KEY, str(int(seconds * 1000))))
        return grpc.aio.AioRpcError(
            grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), trailers, "busy"
        )

    rng = random.Random(3)
    delays = [reconnect_delay(refused(759.0), 1.0, rng) for _ in range(200)]
    assert all(MAX_RETRY_HINT <= delay <= MAX_RETRY_HINT * 1.5 for delay in delays)
    assert MAX_RETRY_HINT == 60.0
    assert 5.0 <= reconnect_delay(refused(5.0), 1.0, rng) <= 7.5  # a short hint as told


async def test_an_owner_key_the_coordinator_does_not_know_is_named_as_such(
    tmp_path: Path, coordinator: FakeCoordinator, caplog: pytest.LogCaptureFixture
) -> None:
    """The coordinator's words are for clients (SPAREGRID_API_KEY); the worker's log says
    which of its own settings is wrong."""
    coordinator.refusal = (
        grpc.StatusCode.UNAUTHENTICATED,
        "BAD_API_KEY",
        "the API key is not known to this coordinator; check SPAREGRID_API_KEY",
    )
    config = make_config(tmp_path, coordinator.address, owner_key="sg_wrong")
    with caplog.at_level("INFO", logger="sparegrid.worker"):
        async with running_worker(config):
            await wait_until(lambda: "owner key" in caplog.text)
    assert "--owner-key-file or SPAREGRID_OWNER_KEY" in caplog.text
    # stopped, it does not say it "never reached the coordinator": it did, and was refused
    [stopped] = [r.getMessage() for r in caplog.records if " stopped; " in r.getMessage()]
    assert f"; the coordinator at {coordinator.address} refused it: the owner key " in stopped
    assert "never reached" not in stopped


async def test_the_stop_line_says_what_the_node_earned(
    tmp_path: Path, coordinator: FakeCoordinator, caplog: pytest.LogCaptureFixture
) -> None:
    """A volunteer who stops the worker sees its credit in the last line it prints, as
    `worker status` words it, without a second command."""
    config = make_config(tmp_path, coordinator.address)
    with caplog.at_level("INFO", logger="sparegrid.worker"):
        async with running_worker(config) as (worker, _):
            await coordinator.session()
            await wait_until(lambda: worker.earnings.day)  # the Welcome (0) was heard first
            worker.earnings.credited(161)  # the fake's Welcome said 0: all of it is today's
    stopped = [r.getMessage() for r in caplog.records if " stopped; " in r.getMessage()]
    assert stopped == [
        f"worker {worker.node_id} stopped; 0 batch(es) left in the outbox; "
        "credit: 161 in the coordinator's ledger, +161 today"
    ]


async def test_a_forced_stop_says_which_tasks_it_stopped(
    tmp_path: Path, coordinator: FakeCoordinator, caplog: pytest.LogCaptureFixture
) -> None:
    """Stopped at once (a second Ctrl-C) mid-task, the worker says it left running tasks
    for the coordinator to run again, rather than only that its outbox is empty."""
    config = make_config(tmp_path, coordinator.address)
    with caplog.at_level("INFO", logger="sparegrid.worker"):
        async with running_worker(config) as (worker, _):
            session = await coordinator.session()
            session.assign(assignment("slow", params={"data": "x", "sleep_ms": 60_000}))
            await wait_until(lambda: worker.attempt_phases().get("slow") is not None)
    [stopped] = [r.getMessage() for r in caplog.records if " stopped; " in r.getMessage()]
    assert "; 1 running task(s) stopped (the coordinator runs them again); credit: " in stopped


async def test_a_worker_that_never_connected_does_not_quote_a_ledger(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = make_config(tmp_path, "127.0.0.1:9")  # nothing listens there
    with caplog.at_level("INFO", logger="sparegrid.worker"):
        async with running_worker(config):
            await wait_until(lambda: "cannot connect to the coordinator" in caplog.text)
    [stopped] = [r.getMessage() for r in caplog.records if " stopped; " in r.getMessage()]
    assert stopped.endswith("it never reached the coordinator at 127.0.0.1:9")
    assert "ledger" not in stopped
