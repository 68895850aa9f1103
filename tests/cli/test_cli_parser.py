"""Wiring of the `sparegrid` command: groups, shared flags, the daemon groups' stub."""

import importlib
import subprocess
import sys
from types import ModuleType

import pytest

from sparegrid.cli import main as cli_main

LEAVES = [
    ["job", "submit", "echo"],
    ["job", "wait", "j"],
    ["job", "results", "j", "-o", "d"],
    ["job", "get", "j"],
    ["job", "list"],
    ["job", "cancel", "j"],
    ["job", "verify", "j"],
    ["admin", "account", "create", "n"],
    ["admin", "account", "list"],
    ["admin", "credit", "grant", "n", "5"],
    ["admin", "nodes"],
    ["admin", "ledger", "check"],
    ["admin", "ledger", "entries"],
]


def test_help_lists_every_group(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli_main.main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for group in ("coordinator", "worker", "job", "admin", "demo"):
        assert group in out
    # each command and its help on one line, aligned (argparse 3.11 broke the longest one)
    lines = [line for line in out.splitlines() if line.startswith("    ")]
    assert lines[0].split() == ["coordinator", "run", "the", "coordinator"]
    assert len({line.index(line.split()[1]) for line in lines}) == 1


def test_python_dash_m_works() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "sparegrid.cli.main", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0
    assert "demo" in done.stdout


@pytest.mark.parametrize("argv", LEAVES, ids=lambda a: " ".join(a[:3]))
def test_every_command_takes_connection_flags(argv: list[str]) -> None:
    args = cli_main.build_parser().parse_args(
        [*argv, "--coordinator", "h:1", "--tls-ca", "/ca.pem"]
    )
    assert (args.coordinator, args.tls_ca) == ("h:1", "/ca.pem")
    assert callable(args.func)


def test_connection_flags_default_to_none_for_the_env() -> None:
    args = cli_main.build_parser().parse_args(["job", "list"])
    assert (args.coordinator, args.tls_ca) == (None, None)


def test_submit_flags() -> None:
    args = cli_main.build_parser().parse_args(
        [
            "job",
            "submit",
            "checksum",
            "--tasks",
            "8",
            "--input",
            "a.bin",
            "--input",
            "x=b.bin",
            "--params",
            '{"k": 1}',
            "--name",
            "n",
            "--max-attempts",
            "3",
            "--wait",
        ]
    )
    assert (args.kind, args.tasks, args.input) == ("checksum", 8, ["a.bin", "x=b.bin"])
    assert (args.name, args.max_attempts, args.wait) == ("n", 3, True)


def test_demo_flags() -> None:
    args = cli_main.build_parser().parse_args(["demo", "--keep", "--workers", "3"])
    assert (args.keep, args.workers, args.tasks) == (True, 3, 64)


def test_missing_daemon_group_becomes_a_stub(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real = importlib.import_module

    def fake_import(name: str, package: str | None = None) -> ModuleType:
        if name == "sparegrid.worker.cli":
            raise ImportError("No module named 'pynvml'")
        return real(name, package)

    monkeypatch.setattr(importlib, "import_module", fake_import)
    assert cli_main.main(["worker", "run", "--coordinator", "x:1"]) == 1
    err = capsys.readouterr().err
    assert "sparegrid worker" in err
    assert "No module named 'pynvml'" in err


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--spot-share", "1.5"], "--spot-share is a share from 0 to 1, got 1.5"),
        (["--canary-rate", "-0.1"], "--canary-rate is a share from 0 to 1, got -0.1"),
        (["--lease", "1", "--heartbeat", "2"], "--lease must be longer than --heartbeat"),
    ],
)
def test_coordinator_serve_refuses_bad_settings(flags: list[str], expected: str) -> None:
    from sparegrid.coordinator.cli import _settings

    args = cli_main.build_parser().parse_args(["coordinator", "serve", *flags])
    with pytest.raises(SystemExit, match=expected):
        _settings(args)


def test_coordinator_serve_takes_the_spot_share() -> None:
    from sparegrid.coordinator.cli import _settings

    args = cli_main.build_parser().parse_args(["coordinator", "serve", "--spot-share", "0"])
    assert _settings(args).spot_checks.share == 0.0


def test_an_unknown_flag_is_refused_with_the_command_usage(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Not the top level's `usage: sparegrid [-h] [--version] COMMAND ...`."""
    with pytest.raises(SystemExit) as info:
        cli_main.main(["job", "submit", "echo", "--count", "5"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: sparegrid job submit ")
    assert "sparegrid job submit: error: unrecognized arguments: --count 5" in err


def test_a_known_command_keeps_no_parser_in_its_arguments() -> None:
    args = cli_main.build_parser().parse_args(["job", "list"])
    assert callable(args.func)
    with pytest.raises(SystemExit):  # and main() drops it before the handler runs
        cli_main.main(["job", "list", "--help"])


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["job", "submit", "echo", "--priority", str(2**31)], "--priority: 2147483648 is past"),
        (["job", "submit", "echo", "--max-attempts", "-1"], "--max-attempts: -1 is below"),
        (["job", "submit", "echo", "--replicas", str(2**32)], "--replicas: 4294967296 is past"),
        (["job", "submit", "echo", "--quorum", str(2**32)], "--quorum: 4294967296 is past"),
        (["job", "list", "--limit", str(2**32)], "--limit: 4294967296 is past"),
        (["account", "stake", str(2**63)], "CREDIT: 9223372036854775808 is past"),
        (["account", "unstake", str(2**63)], "CREDIT: 9223372036854775808 is past"),
        (["admin", "credit", "grant", "n", str(10**20)], "AMOUNT: 100000000000000000000 is past"),
        (["admin", "credit", "debit", "n", str(10**20)], "AMOUNT: 100000000000000000000 is past"),
        (
            ["admin", "account", "create", "n", "--credit", str(2**63)],
            "--credit: 9223372036854775808",
        ),
        (["admin", "invite", "create", "--credit", str(2**63)], "--credit: 9223372036854775808"),
        (["admin", "invite", "create", "--uses", str(2**32)], "--uses: 4294967296 is past"),
        (["admin", "jobs", "list", "--limit", str(2**32)], "--limit: 4294967296 is past"),
        (["admin", "ledger", "entries", "--limit", "-1"], "--limit: -1 is below"),
    ],
    ids=lambda a: " ".join(a[:3]) if isinstance(a, list) else "",
)
def test_a_number_past_what_the_request_holds_is_refused_naming_its_flag(
    argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """It met a ValueError (a traceback) where the request was built, before anything was
    sent; the coordinator's own bounds (a priority of -100 to 100) lie within these."""
    with pytest.raises(SystemExit) as info:
        cli_main.main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"error: argument {says}" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("value", ["-1", "0", "nan", "inf", "soon"])
@pytest.mark.parametrize("command", [["job", "wait", "j"], ["job", "submit", "echo", "--wait"]])
def test_a_timeout_that_is_no_time_to_wait_is_refused(
    command: list[str], value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`job wait J --timeout -1` waited a moment and said the job 'did not finish within
    -1s' (exit 2, as a real timeout): a usage error, before anything is asked."""
    with pytest.raises(SystemExit) as info:
        cli_main.main([*command, "--timeout", value])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "error: argument --timeout: " in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("argv", "meant"),
    [
        (
            ["--coordinator", "10.0.0.1:50051", "job", "list"],
            "sparegrid job list --coordinator 10.0.0.1:50051",
        ),
        (
            ["--coordinator", "grid:50051", "admin", "jobs", "list", "--json"],
            "sparegrid admin jobs list --coordinator grid:50051 --json",
        ),
    ],
)
def test_a_flag_before_the_command_is_refused_with_the_line_as_meant(
    argv: list[str], meant: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """argparse took the flag's value for a command: "invalid choice: '10.0.0.1:50051'"."""
    with pytest.raises(SystemExit) as info:
        cli_main.main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"error: flags go after the command: {meant}" in err and "invalid choice" not in err


@pytest.mark.parametrize("command", ["stake", "unstake"])
def test_a_refused_stake_hints_at_the_clients_own_account(command: str) -> None:
    """`account unstake 100000` (more than staked) hinted at `sparegrid admin credit
    debit`, an operator's command, under the coordinator's 'has 10 staked, not 100000'."""
    from sparegrid.cli import common

    args = cli_main.build_parser().parse_args(["account", command, "5"])
    said = common.hint_for("BAD_AMOUNT", args)
    assert "`sparegrid account` shows your" in said
    assert "admin" not in said
    admin = cli_main.build_parser().parse_args(
        ["admin", "credit", "debit", "n", "5", "--reason", "r"]
    )
    assert "credit debit" in common.hint_for("BAD_AMOUNT", admin)


def test_ctrl_c_while_the_command_starts_exits_130_without_a_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Loading the coordinator's and worker's groups takes a second or so; a Ctrl-C then
    (`sparegrid job wait J`, then a change of mind) printed a 30-line import traceback."""

    def slow_import(name: str) -> ModuleType:
        raise KeyboardInterrupt

    monkeypatch.setattr(importlib, "import_module", slow_import)
    assert cli_main.main(["job", "list"]) == 130
    assert "Traceback" not in capsys.readouterr().err
