"""Config validation, the node key, device detection and the CLI."""

import argparse
import asyncio
import io
import json
import logging
import os
import signal
import stat
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from sparegrid.worker.cli import config_from, register
from sparegrid.worker.config import ConfigError, WorkerConfig, parse_address
from sparegrid.worker.logs import LOGGER_NAME, configure_logging
from sparegrid.worker.node.devices import detect_devices
from sparegrid.worker.node.identity import load_identity
from sparegrid.worker.testing.coordinator import FakeCoordinator, is_kind
from sparegrid.worker.testing.harness import assignment


@pytest.mark.parametrize("address", ["localhost", ":50051", "host:0", "host:99999", "::1:5", "h:x"])
def test_bad_addresses_are_refused(address: str) -> None:
    with pytest.raises(ConfigError, match="coordinator address"):
        parse_address(address)


def test_addresses() -> None:
    assert parse_address("example.org:443") == ("example.org", 443)
    assert parse_address("[::1]:50051") == ("[::1]", 50051)


def test_config_lists_every_problem(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        WorkerConfig(coordinator="nope", data_dir=tmp_path, prefetch=0, tls_ca=tmp_path / "ca.pem")
    text = str(caught.value)
    assert "coordinator address" in text and "prefetch" in text and "--tls-ca" in text


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="sparegrid")
    register(root.add_subparsers(dest="command", required=True))
    return root


def test_flags_override_environment_over_defaults(tmp_path: Path) -> None:
    env = {"SPAREGRID_COORDINATOR": "env-host:1", "SPAREGRID_WORKER_DATA_DIR": str(tmp_path)}
    config = config_from(parser().parse_args(["worker", "run"]), env)
    assert (config.coordinator, config.data_dir) == ("env-host:1", tmp_path)
    assert config.prefetch is None  # adaptive
    args = parser().parse_args(["worker", "run", "--prefetch", "auto"])
    assert config_from(args, env).prefetch is None
    args = parser().parse_args(["worker", "run", "--coordinator", "flag:2", "--prefetch", "5"])
    config = config_from(args, env)
    assert (config.coordinator, config.prefetch) == ("flag:2", 5)
    default = config_from(parser().parse_args(["worker", "run"]), {})
    assert default.coordinator == "127.0.0.1:50051"
    assert default.data_dir == Path("sparegrid-worker")


def test_node_key_is_private_and_reused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    signer = load_identity(tmp_path / "data")
    key = tmp_path / "data" / "node.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert load_identity(tmp_path / "data").public_key == signer.public_key
    args = parser().parse_args(["worker", "id", "--data-dir", str(tmp_path / "data")])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert signer.node_id in out and signer.public_key.hex() in out


class FakeNvmlError(Exception):
    pass


def fake_nvml(count: int = 2, fail_init: bool = False) -> Any:
    def init() -> None:
        if fail_init:
            raise FakeNvmlError("Driver Not Loaded")

    return SimpleNamespace(
        NVMLError=FakeNvmlError,
        nvmlInit=init,
        nvmlShutdown=lambda: None,
        nvmlSystemGetDriverVersion=lambda: b"550.54",
        nvmlDeviceGetCount=lambda: count,
        nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetName=lambda h: "NVIDIA H100",
        nvmlDeviceGetUUID=lambda h: f"GPU-{h}",
        nvmlDeviceGetMemoryInfo=lambda h: SimpleNamespace(total=80 << 30),
        nvmlDeviceGetCudaComputeCapability=lambda h: (9, 0),
    )


def fake_torch(available: bool) -> Any:
    props = SimpleNamespace(name="RTX 4090", total_memory=24 << 30, major=8, minor=9)
    cuda = SimpleNamespace(
        is_available=lambda: available,
        device_count=lambda: 1,
        get_device_properties=lambda i: props,
    )
    return SimpleNamespace(cuda=cuda)


def missing() -> Any:
    raise ImportError("no module")


def test_nvml_devices_come_first(tmp_path: Path) -> None:
    found = detect_devices(lambda: fake_nvml(), lambda: fake_torch(True))
    assert [(d.index, d.uuid, d.compute_capability) for d in found.devices] == [
        (0, "GPU-0", "9.0"),
        (1, "GPU-1", "9.0"),
    ]
    first = found.devices[0]
    assert (first.kind, first.memory_bytes, first.driver_version, first.backend) == (
        "cuda",
        80 << 30,
        "550.54",
        "nvml",
    )
    assert found.summary.startswith("nvml: 2 CUDA devices")


def test_torch_when_nvml_fails_and_cpu_when_nothing_works(tmp_path: Path) -> None:
    found = detect_devices(lambda: fake_nvml(fail_init=True), lambda: fake_torch(True))
    assert [(d.name, d.backend, d.compute_capability) for d in found.devices] == [
        ("RTX 4090", "torch.cuda", "8.9")
    ]
    assert "Driver Not Loaded" in found.summary
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Test CPU 9000\n")
    found = detect_devices(missing, lambda: fake_torch(False), cpuinfo)
    [cpu] = found.devices
    assert (cpu.kind, cpu.name, cpu.backend) == ("cpu", "Test CPU 9000", "cpu")
    assert cpu.memory_bytes > 0
    assert "nvidia-ml-py is not installed" in found.summary
    assert "is_available() is False" in found.summary
    assert "no GPU" in detect_devices(lambda: fake_nvml(count=0), missing, cpuinfo).summary


_CLI = (
    "import argparse, sys; from sparegrid.worker.cli import register; "
    "p = argparse.ArgumentParser(prog='sparegrid'); register(p.add_subparsers(required=True)); "
    "a = p.parse_args(sys.argv[1:]); sys.exit(a.func(a))"
)


async def test_worker_run_drains_on_sigterm(tmp_path: Path, coordinator: FakeCoordinator) -> None:
    data = tmp_path / "node"
    args = ["worker", "run", "--coordinator", coordinator.address, "--data-dir", str(data)]
    env = {**os.environ, "SPAREGRID_WORKER_NAME": "cli-node", "SPAREGRID_WORKER_DEVICES": "cpu"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _CLI,
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        session = await coordinator.session()
        assert session.hello.node_name == "cli-node"
        session.assign(assignment("cli", params={"data": "x", "sleep_ms": 300}))
        await asyncio.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(15):
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()
    assert session.node_id in out.decode() and "cpu" in out.decode()
    await session.wait_for(is_kind("drain"))
    assert session.statements()
    # its cache and outbox hold the clients' inputs and outputs: other users read none
    assert stat.S_IMODE(data.stat().st_mode) == 0o700


def test_json_log_lines_carry_extra_fields() -> None:
    stream = io.StringIO()
    configure_logging(json_lines=True, stream=stream)
    try:
        logging.getLogger(f"{LOGGER_NAME}.test").info("task %s done", "a1", extra={"attempt": "a1"})
    finally:
        logging.getLogger(LOGGER_NAME).handlers.clear()
        logging.getLogger(LOGGER_NAME).propagate = True
    entry = json.loads(stream.getvalue())
    assert entry["message"] == "task a1 done" and entry["attempt"] == "a1"
    assert entry["level"] == "info" and entry["logger"] == "sparegrid.worker.test"
