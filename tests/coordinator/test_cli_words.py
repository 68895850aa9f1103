"""What `sparegrid` says when a real coordinator refuses: the CLI's flags rather than the
job params behind them, a hint only where it applies, and a dry run of `job submit`
refused for what a real submit is refused for."""

import pytest

from tests.coordinator.conftest import Cli, Served

SUBMIT_HINT = "submit fewer tasks"


async def test_refused_params_name_the_flags_that_set_them(cli: Cli, served: Served) -> None:
    long = await cli("job", "submit", "echo", "--data", "x" * 65_537, key=served.alice_key)
    assert long.code == 1
    assert "--data must be a string of at most 65536 characters [BAD_PARAMS]" in long.err
    bare = await cli("job", "submit", "checksum", "--tasks", "2", key=served.alice_key)
    assert bare.code == 1
    assert "expects inputs ['data'], got none; give each with --input NAME=PATH" in bare.err


async def test_the_submit_hint_comes_with_submits_only(cli: Cli, served: Served) -> None:
    submit = await cli("job", "submit", "echo", "--tasks", "500", key=served.alice_key)
    assert submit.code == 1 and "[INSUFFICIENT_CREDIT]" in submit.err
    assert SUBMIT_HINT in submit.err
    dry = await cli("job", "submit", "echo", "--tasks", "500", "--dry-run", key=served.alice_key)
    assert dry.code == 1 and SUBMIT_HINT in dry.err
    debit = await cli("admin", "credit", "debit", "alice", "500", "--reason", "test")
    assert debit.code == 1 and "[INSUFFICIENT_CREDIT]" in debit.err
    assert "hint:" not in debit.err
    stake = await cli("account", "stake", "500", key=served.alice_key)
    assert stake.code == 1 and "[INSUFFICIENT_CREDIT]" in stake.err
    assert "hint:" not in stake.err


@pytest.mark.parametrize(
    ("flags", "code"),
    [
        (["--name", "n" * 201], "BAD_NAME"),
        (["--priority", "101"], "BAD_PRIORITY"),
        (["--webhook", "ftp://example.org/hook"], "BAD_WEBHOOK"),
    ],
)
async def test_a_dry_run_refuses_what_a_submit_refuses(
    cli: Cli, served: Served, flags: list[str], code: str
) -> None:
    for dry in ([], ["--dry-run"]):
        result = await cli("job", "submit", "echo", *flags, *dry, key=served.alice_key)
        assert result.code == 1, (dry, result.out)
        assert f"[{code}]" in result.err, (dry, result.err)
    assert served.app.store.list_jobs() == []
