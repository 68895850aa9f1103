"""Lending a CPU is the volunteer's choice: a worker that finds no GPU says so and exits 2
unless `--devices cpu` (or `devices = ["cpu"]` in its settings file, or
SPAREGRID_WORKER_DEVICES=cpu) chose it."""

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from sparegrid.worker.cli import register
from sparegrid.worker.config import ConfigError, WorkerConfig
from sparegrid.worker.node.devices import Detection, DeviceInfo, detect_devices
from sparegrid.worker.settings import layered
from sparegrid.worker.startup import NO_GPU, check_devices, choose_devices
from sparegrid.worker.testing.harness import fake_devices

CPU = DeviceInfo(0, "cpu", "Test CPU", backend="cpu")
GPUS = (DeviceInfo(0, "cuda", "GPU A", backend="nvml"), DeviceInfo(1, "cuda", "GPU B"))
CPU_ONLY = Detection((CPU,), "cpu: no usable GPU (nvml: NVML found no GPU); the CPU is Test CPU")
WITH_GPUS = Detection(GPUS, "nvml: 2 CUDA devices (GPU A, GPU B)")


def settings(tmp_path: Path, *flags: str, env: dict[str, str] | None = None) -> WorkerConfig:
    root = argparse.ArgumentParser(prog="sparegrid")
    register(root.add_subparsers(dest="command", required=True))
    args = root.parse_args(["worker", "run", "--data-dir", str(tmp_path), *flags])
    return layered(args, env or {})


def test_no_gpu_and_no_choice_is_refused_saying_how_to_choose(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        choose_devices(settings(tmp_path), CPU_ONLY)
    assert str(caught.value).startswith("no GPU found; lending the CPU needs --devices cpu")
    assert "NVML found no GPU" in str(caught.value)  # and why no GPU was found
    with pytest.raises(ConfigError, match="no GPU found"):  # GPU indices are no choice of it
        choose_devices(settings(tmp_path, "--devices", "0"), CPU_ONLY)


def test_the_cpu_chosen_by_flag_file_or_environment(tmp_path: Path) -> None:
    toml = tmp_path / "worker.toml"
    toml.write_text('devices = ["cpu"]\n')
    for config in (
        settings(tmp_path, "--devices", "cpu"),
        settings(tmp_path, "--config", str(toml)),
        settings(tmp_path, env={"SPAREGRID_WORKER_DEVICES": "CPU"}),
    ):
        assert config.devices == "cpu"
        assert choose_devices(config, CPU_ONLY).devices == (CPU,)
        assert config.policy().enabled is None  # the one device is enabled


def test_gpus_are_lent_without_a_choice_and_cpu_lends_the_cpu_only(tmp_path: Path) -> None:
    assert choose_devices(settings(tmp_path), WITH_GPUS) is WITH_GPUS
    assert choose_devices(settings(tmp_path, "--devices", "1"), WITH_GPUS) is WITH_GPUS
    chosen = choose_devices(settings(tmp_path, "--devices", "cpu"), WITH_GPUS)
    [cpu] = chosen.devices
    assert cpu.kind == "cpu" and "lending the CPU only (--devices cpu)" in chosen.summary


def test_cpu_with_gpus_handed_in_and_bad_spellings_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--devices cpu lends only a CPU, but GPU"):
        check_devices(settings(tmp_path, "--devices", "cpu"), GPUS)
    check_devices(settings(tmp_path, "--devices", "cpu"), fake_devices(2))
    for bad in ("cpus", "cpu,0"):
        with pytest.raises(ConfigError, match="GPU indices like 0,2, all or cpu"):
            settings(tmp_path, "--devices", bad)
    toml = tmp_path / "worker.toml"
    toml.write_text('devices = ["cpu", 0]\n')
    with pytest.raises(ConfigError, match="devices"):
        settings(tmp_path, "--config", str(toml))


def _worker_run(tmp_path: Path, *flags: str) -> list[str]:
    sparegrid = str(Path(sys.executable).parent / "sparegrid")
    return [sparegrid, "worker", "run", "--coordinator", "127.0.0.1:9", *flags]


@pytest.fixture
def no_gpu() -> None:
    if any(d.kind == "cuda" for d in detect_devices().devices):
        pytest.skip("this machine has a GPU: the refusal is for machines without one")


@pytest.mark.usefixtures("no_gpu")
def test_worker_run_without_a_gpu_exits_2_and_makes_no_key(tmp_path: Path) -> None:
    data = tmp_path / "node"
    done = subprocess.run(
        _worker_run(tmp_path, "--data-dir", str(data)),
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if not k.startswith("SPAREGRID_WORKER_")},
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(f"error: {NO_GPU}"), done.stderr
    assert "node id" not in done.stdout
    assert not data.exists()  # no node key made, nothing changed


@pytest.mark.usefixtures("no_gpu")
def test_worker_run_lends_the_cpu_its_settings_file_chose(tmp_path: Path) -> None:
    toml = tmp_path / "worker.toml"
    toml.write_text('devices = ["cpu"]\n')
    data = tmp_path / "node"
    proc = subprocess.Popen(
        _worker_run(tmp_path, "--data-dir", str(data), "--config", str(toml), "--sandbox", "off"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = [proc.stdout.readline() for _ in range(3)]
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert first[0].startswith("node id: "), err
    assert first[1].strip().startswith("device 0: ") and "(cpu, " in first[1], first
    assert "no usable GPU" in first[2]  # it started, lending the CPU
