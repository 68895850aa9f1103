"""What `sparegrid` says when a real coordinator refuses: the CLI's flags rather than the
job params behind them."""

from tests.coordinator.conftest import Cli, Served


async def test_refused_params_name_the_flags_that_set_them(cli: Cli, served: Served) -> None:
    long = await cli("job", "submit", "echo", "--data", "x" * 65_537, key=served.alice_key)
    assert long.code == 1
    assert "--data must be a string of at most 65536 characters [BAD_PARAMS]" in long.err
    bare = await cli("job", "submit", "checksum", "--tasks", "2", key=served.alice_key)
    assert bare.code == 1
    assert "expects inputs ['data'], got none; give each with --input NAME=PATH" in bare.err

