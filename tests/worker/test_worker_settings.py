"""Worker settings: TOML file < SPAREGRID_WORKER_* environment < flags, checked at start."""

import argparse
from pathlib import Path

import pytest

from sparegrid.worker.cli import register
from sparegrid.worker.config import ConfigError, WorkerConfig
from sparegrid.worker.node.devices import DeviceInfo
from sparegrid.worker.settings import layered, parse_size
from sparegrid.worker.startup import check_devices


def parse(*flags: str) -> argparse.Namespace:
    root = argparse.ArgumentParser(prog="sparegrid")
    register(root.add_subparsers(dest="command", required=True))
    return root.parse_args(["worker", "run", *flags])


def write_toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "worker.toml"
    path.write_text(text)
    return path


def test_file_then_environment_then_flags(tmp_path: Path) -> None:
    toml = write_toml(
        tmp_path,
        'max_vram = 0.5\nmax_temp = 70\ndevices = [0, 1]\nwindows = ["sat-sun"]\n'
        f'data_dir = "{tmp_path}"\ncache_size = "20GiB"\n',
    )
    config = layered(parse("--config", str(toml)), {})
    assert (config.max_vram, config.max_temp, config.devices) == (0.5, 70.0, (0, 1))
    assert config.windows == ("sat-sun",) and config.cache_size == 20 << 30
    assert config.min_free_disk == 1 << 30  # the default floor
    env = {"SPAREGRID_WORKER_MAX_VRAM": "0.6", "SPAREGRID_WORKER_CONFIG": str(toml)}
    config = layered(parse(), env)
    assert (config.max_vram, config.max_temp) == (0.6, 70.0)
    config = layered(parse("--max-vram", "0.8", "--devices", "0,2", "--max-temp", "80"), env)
    assert (config.max_vram, config.devices, config.max_temp) == (0.8, (0, 2), 80.0)
    config = layered(parse("--min-free-disk", "5GiB"), {"SPAREGRID_WORKER_MIN_FREE_DISK": "0"})
    assert config.min_free_disk == 5 << 30


def test_a_worker_table_is_read_too(tmp_path: Path) -> None:
    toml = write_toml(tmp_path, '[worker]\nwindows = ["mon-fri 22:00-07:00"]\nidle_seconds = 5\n')
    config = layered(parse("--config", str(toml)), {})
    assert config.windows == ("mon-fri 22:00-07:00",) and config.idle_seconds == 5.0


def test_windows_from_the_environment_are_separated_by_semicolons() -> None:
    env = {"SPAREGRID_WORKER_WINDOWS": "mon-fri 22:00-07:00; sat-sun"}
    assert layered(parse(), env).windows == ("mon-fri 22:00-07:00", "sat-sun")


def test_log_format_json_and_the_older_variable() -> None:
    assert layered(parse("--log-format", "json"), {}).log_json
    assert layered(parse("--log-json"), {}).log_json
    assert layered(parse(), {"SPAREGRID_LOG_JSON": "1"}).log_json
    assert not layered(parse(), {}).log_json


@pytest.mark.parametrize(
    ("flags", "env", "says"),
    [
        (
            ["--max-vram", "1.5"],
            {},
            "max_vram must be a number from 0.05 to 1 (share, e.g. 0.8), got 1.5 (from --max-vram)",
        ),
        (["--max-vram", "lots"], {}, "max_vram 'lots' is not a number (from --max-vram)"),
        (
            [],
            {"SPAREGRID_WORKER_MAX_TEMP": "200"},
            "max_temp must be a number from 30 to 110 (degrees C, e.g. 80), got 200.0 (from SPAREGRID_WORKER_MAX_TEMP)",
        ),
        (
            ["--devices", "0,x"],
            {},
            "devices '0,x' is not a list of GPU indices like 0,2, all or cpu",
        ),
        (["--devices", "-1"], {}, "devices must be GPU indices like 0,2, all or cpu"),
        (["--windows", "weekdays"], {}, "time window 'weekdays' is not valid"),
        (["--cache-size", "1KB"], {}, "cache_size must be at least"),
        (["--cache-size", "big"], {}, "cache_size 'big' is not a size like 512MiB"),
        (["--min-free-disk", "most"], {}, "min_free_disk 'most' is not a size like 512MiB"),
        (["--device-state", "magic"], {}, "device_state must be auto, nvml, none or file:PATH"),
        (["--sandbox", "maybe"], {}, "sandbox must be one of auto, require, off"),
        (["--poll-interval", "5"], {}, "poll_interval must be a number from 0.01 to 1"),
        (["--max-download-rate", "10"], {}, "max_download_rate must be at least 65536 bytes"),
        (["--log-format", "xml"], {}, "log_format 'xml' must be text or json"),
        (
            ["--prefetch", "0"],
            {},
            "prefetch must be an integer from 1 to 1024, got 0 (from --prefetch)",
        ),
        (
            ["--coordinator", "grid:99999"],
            {},
            "a port is 1..65535 (from --coordinator)",
        ),
        (
            [],
            {"SPAREGRID_WORKER_NAME": " "},
            "1-64 printable characters (from SPAREGRID_WORKER_NAME)",
        ),
    ],
)
def test_bad_settings_say_what_and_where(flags: list[str], env: dict[str, str], says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        layered(parse(*flags), env)
    assert says in str(caught.value)


def test_every_problem_is_listed_at_once() -> None:
    with pytest.raises(ConfigError) as caught:
        layered(parse("--max-vram", "2", "--max-temp", "5", "--idle-seconds", "-1"), {})
    text = str(caught.value)
    assert "max_vram" in text and "max_temp" in text and "idle_seconds" in text


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("max_vram = [", "is not valid TOML"),
        ("maxvram = 0.8", "unknown setting(s) maxvram"),
        ("max_vram = true", "max_vram True is not a number"),
        ("prefetch = 0", "prefetch must be an integer from 1 to 1024, got 0 (from prefetch in "),
    ],
)
def test_bad_files(tmp_path: Path, text: str, says: str) -> None:
    toml = write_toml(tmp_path, text)
    with pytest.raises(ConfigError, match=None) as caught:
        layered(parse("--config", str(toml)), {})
    assert says in str(caught.value)


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config file .*nope.toml does not exist"):
        layered(parse("--config", str(tmp_path / "nope.toml")), {})


def test_devices_must_exist_on_this_machine(tmp_path: Path) -> None:
    config = WorkerConfig(data_dir=tmp_path, devices=(0, 2))
    gpu = DeviceInfo(0, "cuda", "GPU")
    with pytest.raises(ConfigError, match=r"names device\(s\) 2, but this node has device\(s\) 0"):
        check_devices(config, [gpu])
    check_devices(WorkerConfig(data_dir=tmp_path, devices=(0,)), [gpu])


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("1048576", 1 << 20),
        ("512MiB", 512 << 20),
        ("20 GB", 20_000_000_000),
        ("10MB/s", 10**7),
        ("1.5G", 1_500_000_000),
        (4096, 4096),
    ],
)
def test_sizes(text: object, size: int) -> None:
    assert parse_size(text) == size


def test_status_finds_the_socket_from_flag_env_or_settings_file(tmp_path: Path) -> None:
    from sparegrid.worker.cli import _status_path

    root = argparse.ArgumentParser(prog="sparegrid")
    register(root.add_subparsers(dest="command", required=True))
    toml = write_toml(tmp_path, f'data_dir = "{tmp_path / "node"}"\n')
    args = root.parse_args(["worker", "status", "--config", str(toml)])
    assert _status_path(args, {}) == tmp_path / "node" / "status.sock"
    args = root.parse_args(["worker", "status"])
    assert (
        _status_path(args, {"SPAREGRID_WORKER_CONFIG": str(toml)})
        == tmp_path / "node" / "status.sock"
    )
    assert _status_path(args, {"SPAREGRID_WORKER_DATA_DIR": "d"}) == Path("d/status.sock")
    args = root.parse_args(["worker", "status", "--status-socket", "/run/x.sock"])
    assert _status_path(args, {}) == Path("/run/x.sock")
