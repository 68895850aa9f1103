"""A model folder's chat template runs on the client's machine: real templates render as
jinja2's sandbox renders them, and a hostile one (nested loops, a string of gigabytes)
ends within seconds as a clear BAD_MODEL error naming its file, nothing uploaded."""

import json
import time
from pathlib import Path
from typing import Any

import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer

from sparegrid.sdk import InvalidArgumentError
from sparegrid.sdk.generate import Tokenizer as ModelTokenizer
from sparegrid.sdk.generate import tokenize
from sparegrid.wire.llm import ModelInfo

pytestmark = pytest.mark.timeout(60)

CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{% endif %}"
)
ZEPHYR = (  # its line breaks are where trim_blocks and lstrip_blocks matter
    "{% for message in messages %}\n{% if message['role'] == 'user' %}\n"
    "{{ '<|user|>\\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'system' %}\n{{ '<|system|>\\n' + message['content'] + "
    "eos_token }}\n{% elif message['role'] == 'assistant' %}\n"
    "{{ '<|assistant|>\\n'  + message['content'] + eos_token }}\n{% endif %}\n"
    "{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n"
    "{% endfor %}"
)
CHATS = [
    [{"role": "user", "content": "hello world"}],
    [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "  the quick brown fox  "},
        {"role": "assistant", "content": "jumps"},
        {"role": "user", "content": "<b>&amp; {{ not a template }}</b>"},
    ],
]
SPECIAL = {"bos_token": "<s>", "eos_token": "</s>"}


def model(folder: Path, tokenizer: Tokenizer, template: str) -> Path:
    folder.mkdir(exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    config = {"chat_template": template, **SPECIAL, "model_max_length": 4096}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def submit(folder: Path, chats: list[list[dict[str, str]]]) -> list[Any]:
    tokenizer = ModelTokenizer(folder)
    size = tokenizer.tokenizer.get_vocab_size()
    info = ModelInfo("LlamaForCausalLM", size, size, 1 << 20, 64, 2, 1, 1, (0,))
    requests = [{"custom_id": f"r{i}", "body": {"messages": c}} for i, c in enumerate(chats)]
    return tokenize(requests, tokenizer, info, 16, "prompts.jsonl")


@pytest.mark.parametrize("template", [CHATML, LLAMA3, ZEPHYR], ids=["chatml", "llama3", "zephyr"])
def test_real_templates_render_as_the_sandbox_renders_them(
    template: str, tokenizer: Tokenizer, tmp_path: Path
) -> None:
    folder = model(tmp_path / "m", tokenizer, template)
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    expected = [
        env.from_string(template).render(messages=c, add_generation_prompt=True, **SPECIAL)
        for c in CHATS
    ]
    assert ModelTokenizer(folder).render_all(CHATS) == expected
    assert ModelTokenizer(folder).render(CHATS[1]) == expected[1]
    prompts = submit(folder, CHATS * 50)
    assert [p.input_ids for p in prompts[:2]] == [tokenizer.encode(t).ids for t in expected]


@pytest.mark.parametrize(
    ("template", "why"),
    [
        (
            "{% for a in range(99999) %}{% for b in range(99999) %}{{ '' }}{% endfor %}"
            "{% endfor %}",
            "did not finish in 1.0 s",
        ),
        (
            "{% for a in range(99999) %}{% for b in range(99999) %}{% endfor %}{% endfor %}",
            "did not finish in 1.0 s: it loops for too long",
        ),
        ("{{ 'x' * 10**10 }}", "used more than 1024 MiB of memory"),
        # 3 GB a piece at a time: out of memory or out of time, whichever comes first
        ("{% for a in range(30) %}{{ 'y' * 10**8 }}{% endfor %}", "memory|did not finish"),
        ("{{ 'z' * 5000000 }}", "rendered more than 4,194,304 characters"),
        ("{% for message in messages %}", "the chat template: Unexpected end of template"),
    ],
    ids=["nested-loops", "empty-nested-loops", "huge-string", "huge-output", "long", "syntax"],
)
def test_a_hostile_or_broken_template_ends_quickly_as_bad_model(
    template: str, why: str, tokenizer: Tokenizer, tmp_path: Path
) -> None:
    folder = model(tmp_path / "m", tokenizer, template)
    started = time.monotonic()
    with pytest.raises(InvalidArgumentError) as caught:
        submit(folder, CHATS)
    took = time.monotonic() - started
    assert caught.value.code == "BAD_MODEL"
    message = str(caught.value)
    assert str(folder / "tokenizer_config.json") in message, message
    assert any(part in message for part in why.split("|")), message
    assert "nothing was uploaded" in message
    assert took < 15, took  # about 1 s on an idle machine; the child's start is the rest


def test_a_template_failing_on_one_request_names_it(tokenizer: Tokenizer, tmp_path: Path) -> None:
    template = "{% for m in messages %}{{ m['content'] + m['name'] }}{% endfor %}"
    folder = model(tmp_path / "m", tokenizer, template)
    chats = [[{"role": "user", "content": "hi", "name": "a"}], [{"role": "user", "content": "x"}]]
    with pytest.raises(InvalidArgumentError) as caught:
        submit(folder, chats)
    assert caught.value.code == "BAD_PROMPTS"
    assert str(caught.value).startswith("prompts.jsonl request 2: the chat template failed: ")
