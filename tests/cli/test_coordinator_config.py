"""`coordinator serve`'s settings in layers: defaults < TOML file < SPAREGRID_* environment
< flags, through the loader the worker uses too; bad files name the key and the file."""

from pathlib import Path

import pytest

from sparegrid.cli import main as cli_main
from sparegrid.coordinator import config
from sparegrid.coordinator.config import ServeConfig
from sparegrid.coordinator.services.identity import Enrollment
from sparegrid.coordinator.services.prices import Price
from sparegrid.coordinator.settings import Settings
from sparegrid.wire.config import ConfigError

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def load(*flags: str, env: dict[str, str] | None = None) -> ServeConfig:
    args = cli_main.build_parser().parse_args(["coordinator", "serve", *flags])
    return config.load(args, env or {})


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "coordinator.toml"
    path.write_text(text)
    return path


def test_the_defaults_are_those_of_settings() -> None:
    got = load()
    defaults = Settings(data_dir=config.DEFAULT_DATA_DIR)
    assert got.settings == defaults
    assert (got.listen, got.database, got.log_level) == ("127.0.0.1:50051", "", "INFO")
    assert got.database_url == "sqlite:///sparegrid-coordinator/coordinator.db"


def test_help_shows_each_default_once_taken_from_settings(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        cli_main.build_parser().parse_args(["coordinator", "serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for shown in (
        "--lease S lease seconds",
        "[30] (env SPAREGRID_COORDINATOR_LEASE)",
        "[127.0.0.1:50051] (env SPAREGRID_LISTEN)",
        "[16GiB]",
        "[86400s]",
        "default /etc/sparegrid/coordinator.toml when it exists",
        "--min-worker-version VERSION",
    ):
        assert shown in text, shown


def test_file_then_environment_then_flags(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[coordinator]\nlease = 40\nheartbeat = 4\nlisten = "0.0.0.0:6000"\n'
        'stored_quota = "2GiB"\nwait_limit = "90m"\nprice = ["echo=3", "render=2/100"]\n'
        'enrollment = "approve"\nmin_worker_version = "0.2"\n',
    )
    got = load("--config", str(path))
    assert (got.settings.lease_seconds, got.settings.heartbeat_seconds) == (40.0, 4.0)
    assert got.listen == "0.0.0.0:6000"
    assert got.settings.quotas.stored == 2 << 30
    assert got.settings.wait_limit_seconds == 5400.0
    assert got.settings.prices["echo"] == Price(3) and got.settings.prices["render"] == Price(
        2, 100
    )
    assert got.settings.identity.enrollment == Enrollment.APPROVE
    assert got.settings.min_worker_version == "0.2"
    env = {"SPAREGRID_COORDINATOR_LEASE": "50", "SPAREGRID_LISTEN": "127.0.0.1:7000"}
    got = load("--config", str(path), env=env)
    assert (got.settings.lease_seconds, got.listen) == (50.0, "127.0.0.1:7000")
    got = load("--config", str(path), "--lease", "60", env=env)
    assert got.settings.lease_seconds == 60.0
    assert got.sources["lease"] == "--lease" and got.sources["heartbeat"].endswith(str(path))
    got = load(env={**env, "SPAREGRID_COORDINATOR_CONFIG": str(path)})
    assert got.settings.heartbeat_seconds == 4.0  # the file named by the environment


def test_keys_may_sit_at_the_top_of_the_file(tmp_path: Path) -> None:
    got = load("--config", str(write(tmp_path, "lease = 45\n")))
    assert got.settings.lease_seconds == 45.0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("leese = 40\n", "has unknown setting(s) leese; known: "),
        ('lease = "soon"\n', "lease 'soon' is not a number (from lease in "),
        ("stored_quota = true\n", "stored_quota True is not a size"),
        ('enrollment = "closed"\n', "enrollment 'closed' is not one of open, approve, owners"),
        ('price = ["echo"]\n', "has 'echo'; a price is KIND=CREDIT[/UNITS]"),
        ('price = ["render=1/9223372036854775808"]\n', "1 to 2^63 - 1 credit per 1 to 2^63 - 1"),
        ("lease = 3\nheartbeat = 5\n", "must be longer than heartbeat in "),
        ("idle_heartbeat = 5\n", "idle_heartbeat in "),
        ("spot_share = 2.0\n", "spot_share in "),
        ('min_worker_version = "latest"\n', "'latest' is not a version like 0.2"),
        ("lease = [\n", "is not valid TOML"),
    ],
)
def test_a_bad_file_names_the_key_and_the_file(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load("--config", str(path))
    message = str(caught.value)
    assert expected in message
    assert str(path) in message


def test_a_missing_file_and_bad_environment_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config file .*nope\.toml does not exist"):
        load("--config", str(tmp_path / "nope.toml"))
    with pytest.raises(ConfigError, match=r"heartbeat 'fast' is not a number \(from SPAREGRID_"):
        load(env={"SPAREGRID_COORDINATOR_HEARTBEAT": "fast"})


def test_serve_exits_with_the_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "leese = 40\n")
    with pytest.raises(SystemExit, match=f"error: config file {path} has unknown setting"):
        cli_main.main(["coordinator", "serve", "--config", str(path)])


def test_the_example_coordinator_toml_loads() -> None:
    got = load("--config", str(DEPLOY / "coordinator.toml"))
    assert got.listen == "0.0.0.0:50051"
    assert got.settings.data_dir == Path("/var/lib/sparegrid/coordinator")
    assert got.settings.min_worker_version == "0.1"
    assert got.settings.identity.enrollment == Enrollment.OPEN
    # every key the example names, commented or not, is one the loader knows
    keys = set()
    for line in (DEPLOY / "coordinator.toml").read_text().splitlines():
        bare = line.lstrip("# ").split("=")[0].strip()
        if "=" in line and bare.replace("_", "").isalpha():
            keys.add(bare)
    assert keys <= set(config.SCHEMA.by_key), keys - set(config.SCHEMA.by_key)
    assert set(config.SCHEMA.by_key) <= keys, set(config.SCHEMA.by_key) - keys


def test_blobs_in_a_bucket_from_the_file_the_environment_or_a_flag(tmp_path: Path) -> None:
    path = write(tmp_path, 'blobs = "s3://grid-blobs/coord-1"\nblob_cache_size = "2GiB"\n')
    got = load("--config", str(path))
    assert (got.settings.blobs, got.settings.blob_cache_size) == (
        "s3://grid-blobs/coord-1",
        2 << 30,
    )
    got = load("--config", str(path), env={"SPAREGRID_COORDINATOR_BLOBS": "local"})
    assert got.settings.blobs == "local"
    assert load("--blobs", "s3://other").settings.blobs == "s3://other"
    assert load().settings.blobs == "local"


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("gs://bucket", "is neither 'local' nor s3://BUCKET[/PREFIX]"),
        ("s3://", "names no bucket"),
        ("s3://Bad_Bucket/x", "names 'Bad_Bucket', not an S3 bucket name"),
    ],
)
def test_a_bad_blobs_url_in_the_file_names_the_key_and_the_file(
    tmp_path: Path, value: str, says: str
) -> None:
    path = write(tmp_path, f'blobs = "{value}"\n')
    with pytest.raises(ConfigError) as err:
        load("--config", str(path))
    assert f"blobs {value!r} {says}" in str(err.value) and str(path) in str(err.value)


def test_idle_workers_heartbeat_every_minute_and_never_more_often_than_busy_ones() -> None:
    assert load().settings.idle_heartbeat_seconds == 60.0
    assert load("--idle-heartbeat", "120").settings.idle_heartbeat_seconds == 120.0
    slow = load("--heartbeat", "90", "--lease", "300").settings
    assert (slow.heartbeat_seconds, slow.idle_heartbeat_seconds) == (90.0, 90.0)
    with pytest.raises(ConfigError, match=r"--idle-heartbeat \(5\) must be at least --heartbeat"):
        load("--idle-heartbeat", "5")
