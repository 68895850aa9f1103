"""`coordinator serve`'s storage flags: quotas in sizes, retention and expiry in durations."""

import pytest

from sparegrid.cli import main as cli_main
from sparegrid.coordinator.services.quotas import QuotaConfig
from sparegrid.coordinator.services.sweeper import SweepConfig


def settings(*flags: str):  # type: ignore[no-untyped-def]
    from sparegrid.coordinator.cli import _settings

    return _settings(cli_main.build_parser().parse_args(["coordinator", "serve", *flags]))


def test_defaults() -> None:
    got = settings()
    assert (got.quotas, got.sweeps) == (QuotaConfig(), SweepConfig())


def test_sizes_and_durations_take_units() -> None:
    got = settings(
        "--in-flight-quota",
        "2GiB",
        "--stored-quota",
        "500GB",
        "--anonymous-in-flight-quota",
        "1048576",
        "--anonymous-stored-quota",
        "1.5TiB",
        "--upload-expiry",
        "12h",
        "--blob-retention",
        "7d",
        "--node-expiry",
        "90m",
        "--sweep-interval",
        "30",
    )
    assert got.quotas == QuotaConfig(2 << 30, 500 * 10**9, 1 << 20, int(1.5 * (1 << 40)))
    assert got.sweeps == SweepConfig(30.0, 12 * 3600.0, 7 * 86400.0, 90 * 60.0)


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--stored-quota", "lots"], "stored_quota 'lots' is not a size like 512MiB"),
        (["--blob-retention", "a week"], "blob_retention 'a week' is not a duration like 3d"),
        (["--in-flight-quota=-1GiB"], "is not a size .* \\(from --in-flight-quota\\)"),
    ],
)
def test_bad_values_are_refused_naming_the_flag(flags: list[str], expected: str) -> None:
    with pytest.raises(SystemExit, match=expected):
        settings(*flags)


def test_a_zero_duration_is_refused() -> None:
    with pytest.raises(SystemExit, match="--blob-retention must be positive"):
        settings("--blob-retention", "0")
