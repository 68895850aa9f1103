"""A newcomer's mistakes with `job submit generate` and `Client.generate` are refused
before anything is uploaded or submitted, saying what was wrong: a batch line meant for
another endpoint, a file that is not UTF-8, a job option out of range, an --out that the
end of the job could not write. Each used to be accepted, fail after the upload, or end
in a traceback."""

import json
from pathlib import Path
from typing import Any

import pytest

from sparegrid.cli import main as cli_main
from sparegrid.sdk.errors import InvalidArgumentError
from sparegrid.sdk.generate import read_batch, submit


@pytest.fixture(autouse=True)
def nowhere(monkeypatch: pytest.MonkeyPatch) -> None:
    """A key, and a coordinator address where none answers: each mistake here is refused
    before anything is sent."""
    monkeypatch.setenv("SPAREGRID_API_KEY", "sg_test")
    monkeypatch.setenv("SPAREGRID_COORDINATOR", "127.0.0.1:9")


class NoClient:
    """A client that must not be reached: every check here comes first."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the client was used ({name}) before the mistake was found")


def refused(lines: list[dict[str, Any]]) -> str:
    with pytest.raises(InvalidArgumentError) as caught:
        read_batch([json.dumps(x) for x in lines], "batch.jsonl")
    assert caught.value.code == "BAD_PROMPTS"
    return caught.value.message


CHAT_BODY = {"messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ({"method": "GET", "url": "/v1/chat/completions", "body": CHAT_BODY}, "method 'GET'"),
        ({"url": "/v1/embeddings", "body": CHAT_BODY}, "url '/v1/embeddings' is not run here"),
        ({"url": "/v1/completions", "body": CHAT_BODY}, "/v1/completions takes a prompt"),
        ({"url": "/v1/chat/completions", "body": {"prompt": "hi"}}, "takes messages"),
    ],
)
def test_a_line_for_another_endpoint_is_refused(line: dict[str, Any], says: str) -> None:
    message = refused([{"custom_id": "a", **line}])
    assert message.startswith("batch.jsonl line 1: ")
    assert says in message


def test_a_line_naming_its_own_endpoint_passes() -> None:
    lines = [
        {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": CHAT_BODY},
        {"custom_id": "b", "method": "POST", "url": "/v1/completions", "body": {"prompt": "x"}},
        {"custom_id": "c", "body": {"prompt": "no url is fine"}},
    ]
    assert len(read_batch([json.dumps(x) for x in lines])) == 3


def test_a_request_max_tokens_is_named_as_the_bodys_not_the_flag(
    capsys: pytest.CaptureFixture[str], llama: Path, tmp_path: Path
) -> None:
    batch = tmp_path / "b.jsonl"
    batch.write_text(json.dumps({"custom_id": "a", "body": {"prompt": "hi", "max_tokens": 0}}))
    code = cli_main.main(
        ["job", "submit", "generate", "--model", str(llama), "--prompts", str(batch)]
    )
    err = capsys.readouterr().err
    assert code != 0
    assert "line 1: body.max_tokens must be a positive integer" in err


def test_a_prompts_file_that_is_not_utf8_names_its_line(llama: Path, tmp_path: Path) -> None:
    batch = tmp_path / "b.jsonl"
    batch.write_bytes(b'{"custom_id": "a", "body": {"prompt": "hi"}}\n\xff\xfe\n')
    with pytest.raises(InvalidArgumentError) as caught:
        submit(NoClient(), llama, batch, max_tokens=8)  # type: ignore[arg-type]
    assert caught.value.code == "BAD_PROMPTS"
    assert f"{batch} line 2: not UTF-8 text" in caught.value.message


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"max_tokens": 0}, "max_tokens must be from 1 to 32768, got 0"),
        ({"max_tokens": 10**8}, "max_tokens must be from 1 to 32768"),
        ({"temperature": -1.0}, "temperature must be from 0 to 2"),
        ({"temperature": float("nan")}, "temperature must be from 0 to 2"),
        ({"seed": -1}, "seed must be from 0"),
        ({"task_tokens": 0}, "task_tokens must be from 1 to 262144"),
    ],
)
def test_a_job_option_out_of_range_is_refused_before_any_upload(
    options: dict[str, Any], says: str, tmp_path: Path
) -> None:
    # the model folder is not even read: the options are checked first
    with pytest.raises(InvalidArgumentError) as caught:
        submit(NoClient(), tmp_path / "absent", tmp_path / "absent.jsonl", **options)  # type: ignore[arg-type]
    assert caught.value.code == "BAD_PARAMS"
    assert says in caught.value.message


def test_the_cli_names_the_flags(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    batch = tmp_path / "b.jsonl"
    batch.write_text(json.dumps({"custom_id": "a", "body": {"prompt": "hi"}}))
    base = ["job", "submit", "generate", "--model", str(tmp_path), "--prompts", str(batch)]
    assert cli_main.main([*base, "--max-tokens", "0"]) == 1
    assert "--max-tokens must be from 1 to 32768, got 0" in capsys.readouterr().err
    assert cli_main.main([*base, "--seed", "-1"]) == 1
    assert "--seed must be from 0" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        ([], "--out is written as the job ends"),
        (["--wait"], "already exists; remove it or name another file"),
        (["--dry-run"], "--dry-run submits nothing: drop --out"),
    ],
)
def test_an_out_file_that_could_not_be_written_is_refused_before_submit(
    flags: list[str], says: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    batch = tmp_path / "b.jsonl"
    batch.write_text(json.dumps({"custom_id": "a", "body": {"prompt": "hi"}}))
    out = tmp_path / "results.jsonl"
    out.write_text("someone's results\n")
    argv = ["job", "submit", "generate", "--model", str(tmp_path), "--prompts", str(batch)]
    code = cli_main.main([*argv, "--out", str(out), *flags])
    assert code == 1
    assert says in capsys.readouterr().err
    assert out.read_text() == "someone's results\n"


def test_an_out_in_a_missing_folder_is_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    batch = tmp_path / "b.jsonl"
    batch.write_text(json.dumps({"custom_id": "a", "body": {"prompt": "hi"}}))
    argv = ["job", "submit", "generate", "--model", str(tmp_path), "--prompts", str(batch)]
    code = cli_main.main([*argv, "--wait", "--out", str(tmp_path / "nodir" / "r.jsonl")])
    assert code == 1
    assert "no such folder" in capsys.readouterr().err
