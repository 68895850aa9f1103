"""A batch file's request options that would change a completion are honoured or refused,
naming the line: never silently dropped (a request asking for 3 completions, a stop
sequence or its own temperature used to get one greedy completion, with no word)."""

import json
from typing import Any

import pytest

from sparegrid.sdk.errors import InvalidArgumentError
from sparegrid.sdk.generate import read_batch


def line(**body: Any) -> str:
    return json.dumps({"custom_id": "a", "body": {"prompt": "hi", **body}})


def refused(body: dict[str, Any], **job: Any) -> str:
    lines = [line(), line(**body).replace('"a"', '"b"')]
    with pytest.raises(InvalidArgumentError) as caught:
        read_batch(lines, "batch.jsonl", **job)
    assert caught.value.code == "BAD_PROMPTS"
    assert caught.value.message.startswith("batch.jsonl line 2: ")
    return caught.value.message


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"n": 3}, "n 3 is not supported: each request gets one completion"),
        ({"stop": ["\n"]}, "stop ['\\n'] is not supported: generation stops at the end"),
        ({"stream": True}, "stream True is not supported"),
        ({"top_p": 0.9}, "top_p 0.9 is not supported"),
        ({"logprobs": True}, "logprobs True is not supported"),
        ({"tools": [{"type": "function"}]}, "tools"),
        ({"response_format": {"type": "json_object"}}, "response_format is not supported"),
    ],
)
def test_an_option_the_network_does_not_run_is_refused(body: dict[str, Any], says: str) -> None:
    assert says in refused(body)


def test_a_temperature_or_seed_other_than_the_jobs_is_refused() -> None:
    message = refused({"temperature": 0.7}, temperature=0.0, seed=0)
    assert "temperature 0.7 differs from the job's 0.0" in message
    assert "--temperature" in message
    assert "seed 5 differs from the job's 1" in refused({"seed": 5}, temperature=0.0, seed=1)


def test_options_that_change_nothing_pass() -> None:
    body = {
        "model": "qwen",
        "n": 1,
        "temperature": 0.7,
        "seed": 3,
        "top_p": 1,
        "stop": None,
        "stream": False,
        "response_format": {"type": "text"},
        "user": "me",
        "max_tokens": 8,
    }
    [request] = read_batch([line(**body)], "batch.jsonl", temperature=0.7, seed=3)
    assert request["body"]["max_tokens"] == 8
