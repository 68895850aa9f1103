"""A generation job's text work, shared by the asyncio and the sync SDK: OpenAI Batch
requests in, checked and tokenized; completions out, decoded, as Batch output lines.

The client does the text work: it reads the batch file (one request per line, `custom_id`
kept, a body with `messages` or `prompt`), renders chat messages with the model's chat
template (jinja2's sandbox) and tokenizes with its `tokenizer.json`, so a volunteer never
parses text or templates, and the coordinator counts and prices exact tokens. The model
folder is checked first (sparegrid.wire.llm): an unknown architecture, remote code, pickled
weights or a tokenizer of another model is refused before anything is uploaded.

Everything here is local and blocking (reading, hashing, tokenizing): the job calls
(sparegrid.sdk._async.generate) run it through `aoffload`, off the event loop.
"""

import json
import os
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sparegrid.sdk import chat_template
from sparegrid.sdk.errors import InvalidArgumentError, JobFailedError
from sparegrid.sdk.models import DeviceKind, Requirements
from sparegrid.wire.llm import (
    MAX_NEW_TOKENS,
    MAX_TASK_TOKENS,
    PRECISIONS,
    BadModel,
    BadPrompts,
    ModelInfo,
    Prompt,
    check_model,
    encode_prompts,
    model_files,
    read_prompts,
)

PROMPTS_PER_FILE = 4096
CHAT, TEXT = "/v1/chat/completions", "/v1/completions"


@dataclass(frozen=True)
class Completion:
    custom_id: str
    text: str
    tokens: list[int]
    finish_reason: str  # "stop" (end of sequence) or "length" (its token limit)
    prompt_tokens: int


def _bad(path: Path | str, number: int, why: str) -> InvalidArgumentError:
    return InvalidArgumentError("BAD_PROMPTS", f"{path} line {number}: {why}")


# What a request's body may set that changes what comes back, and what a job does with it
# ("" when the job cannot do it at all): any other value is refused, naming the line,
# rather than ignored. Other fields (model, user, metadata, ...) change nothing here.
_NEUTRAL: dict[str, Any] = {
    "n": 1,
    "top_p": 1,
    "frequency_penalty": 0,
    "presence_penalty": 0,
    "stream": False,
    "logprobs": False,
    "stop": None,
    "logit_bias": None,
    "tools": None,
    "tool_choice": None,
    "top_logprobs": None,
}
_UNSUPPORTED = {
    "n": "each request gets one completion (repeat it under other custom_ids for more)",
    "stream": "completions come back as the job's tasks finish, not streamed",
    "stop": "generation stops at the end-of-sequence token or max_tokens only",
}


def _options(path: Path | str, number: int, body: dict[str, Any], job: dict[str, Any]) -> None:
    """Refuses a request option this job would not honour: one the network does not run,
    or a temperature or seed other than the job's (they are set per job)."""
    for key, neutral in _NEUTRAL.items():
        value = body.get(key)
        if key in body and value != neutral and value not in (None, [], {}, ""):
            why = _UNSUPPORTED.get(key, "generation jobs do not support it")
            raise _bad(path, number, f"{key} {value!r} is not supported: {why}")
    format_ = body.get("response_format")
    if format_ not in (None, {"type": "text"}):
        raise _bad(path, number, "response_format is not supported: completions are text")
    for key, value in job.items():
        if key in body and body[key] is not None and body[key] != value:
            raise _bad(
                path,
                number,
                f"{key} {body[key]!r} differs from the job's {value!r}: it is set for the "
                f"whole job (--{key} on the command line, {key}= in the SDK)",
            )


def _endpoint(path: Path | str, number: int, item: dict[str, Any], body: dict[str, Any]) -> None:
    """A line's method and url, where it names them, must be a request this job runs: a
    line meant for /v1/embeddings, or a chat body sent to /v1/completions, is refused
    rather than answered as something it did not ask for."""
    method, url = item.get("method"), item.get("url")
    if method is not None and method != "POST":
        raise _bad(path, number, f"method {method!r}: a Batch request is a POST")
    if url is None:
        return
    if url not in (CHAT, TEXT):
        raise _bad(path, number, f"url {url!r} is not run here; use {CHAT} or {TEXT}")
    if (url == CHAT) != ("messages" in body):
        wants, has = ("messages", "a prompt") if url == CHAT else ("a prompt", "messages")
        raise _bad(path, number, f"a request to {url} takes {wants}; this body has {has}")


def _utf8_lines(raw: Iterable[bytes], path: Path | str) -> Iterator[str]:
    for number, line in enumerate(raw, start=1):
        try:
            yield line.decode("utf-8")
        except UnicodeDecodeError:
            raise _bad(path, number, "not UTF-8 text; a batch file is JSON lines") from None


def check_job(max_tokens: int, temperature: float, seed: int, task_tokens: int | None) -> None:
    """The coordinator's bounds on a job's params, checked before anything is uploaded."""
    if type(max_tokens) is not int or not 1 <= max_tokens <= MAX_NEW_TOKENS:
        raise InvalidArgumentError(
            "BAD_PARAMS", f"max_tokens must be from 1 to {MAX_NEW_TOKENS}, got {max_tokens}"
        )
    number = isinstance(temperature, int | float) and not isinstance(temperature, bool)
    if not number or not 0 <= temperature <= 2:
        why = "0 is greedy" if number else "a number"
        raise InvalidArgumentError(
            "BAD_PARAMS", f"temperature must be from 0 to 2 ({why}), got {temperature}"
        )
    if type(seed) is not int or not 0 <= seed < 2**63:
        raise InvalidArgumentError("BAD_PARAMS", f"seed must be from 0 to 2**63-1, got {seed}")
    if task_tokens is not None and (
        type(task_tokens) is not int or not 1 <= task_tokens <= MAX_TASK_TOKENS
    ):
        raise InvalidArgumentError(
            "BAD_PARAMS", f"task_tokens must be from 1 to {MAX_TASK_TOKENS}, got {task_tokens}"
        )


def read_batch(
    lines: Iterable[str], path: Path | str = "prompts", **job: Any
) -> list[dict[str, Any]]:
    """A batch file's requests, each checked; errors name the line. `job`: the options
    set for the whole job (temperature, seed) that a request may repeat but not change."""
    requests, seen = [], set()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise _bad(path, number, f"not JSON ({exc.msg})") from None
        if not isinstance(item, dict) or not isinstance(item.get("custom_id"), str):
            raise _bad(path, number, "each line is an object with a custom_id")
        body = item.get("body")
        if not isinstance(body, dict):
            raise _bad(path, number, "no request body")
        _endpoint(path, number, item, body)
        messages, prompt = body.get("messages"), body.get("prompt")
        ok_chat = isinstance(messages, list) and all(
            isinstance(m, dict)
            and isinstance(m.get("role"), str)
            and isinstance(m.get("content"), str)
            for m in messages
        )
        if not (ok_chat and messages) and not isinstance(prompt, str):
            raise _bad(path, number, "the body needs messages (role, content) or a prompt")
        limit = body.get("max_completion_tokens", body.get("max_tokens"))
        if limit is not None and (type(limit) is not int or limit < 1):
            raise _bad(path, number, "body.max_tokens must be a positive integer")
        _options(path, number, body, job)
        if item["custom_id"] in seen:
            raise _bad(path, number, f"custom_id {item['custom_id']!r} is used twice")
        seen.add(item["custom_id"])
        requests.append(item)
    if not requests:
        raise InvalidArgumentError("BAD_PROMPTS", f"{path} holds no requests")
    return requests


class Tokenizer:
    """A model's tokenizer.json, with its chat template when tokenizer_config.json has one."""

    def __init__(self, folder: Path) -> None:
        from tokenizers import Tokenizer as HFTokenizer

        self.folder = folder
        self.tokenizer = HFTokenizer.from_file(str(folder / "tokenizer.json"))
        config_path = folder / "tokenizer_config.json"
        self.config: dict[str, Any] = {}
        if config_path.is_file():
            self.config = json.loads(config_path.read_text())
        self.template = self.config.get("chat_template")

    def render(self, messages: list[dict[str, str]]) -> str:
        return self.render_all([messages])[0]

    def render_all(self, conversations: list[list[dict[str, str]]]) -> list[str]:
        """Each conversation as the model's chat template renders it, in a child process
        with a time and memory limit (chat_template.py): the template is the model
        folder's, not ours. TemplateFailed if it fails, loops or grows too large."""
        if not isinstance(self.template, str):
            return [
                "\n".join([*(f"{m['role']}: {m['content']}" for m in messages), "assistant:"])
                for messages in conversations
            ]
        special = {
            k: v for k, v in self.config.items() if k.endswith("_token") and isinstance(v, str)
        }
        return chat_template.render(self.template, special, conversations)

    def encode(self, text: str) -> list[int]:
        try:
            return list(self.tokenizer.encode(text, add_special_tokens=True).ids)
        except BaseException as exc:  # tokenizers panics (a BaseException) on a bad regex
            if type(exc).__name__ != "PanicException":
                raise
            raise InvalidArgumentError(
                "BAD_TOKENIZER", f"tokenizer.json failed on a prompt: {exc}"
            ) from None

    def decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))


def check(model_dir: Path) -> tuple[dict[str, Path], ModelInfo]:
    try:
        files = model_files(model_dir)
        return files, check_model(files)
    except BadModel as exc:
        raise InvalidArgumentError(exc.code, str(exc)) from None


def tokenize(
    requests: list[dict[str, Any]],
    tokenizer: Tokenizer,
    info: ModelInfo,
    max_tokens: int,
    path: Path | str,
) -> list[Prompt]:
    chats = [i for i, item in enumerate(requests) if "messages" in item["body"]]
    try:
        rendered = tokenizer.render_all([requests[i]["body"]["messages"] for i in chats])
    except chat_template.TemplateFailed as exc:
        index = chats[exc.index] if exc.index >= 0 else -1
        raise _template_error(tokenizer, path, index, exc) from None
    texts = dict(zip(chats, rendered, strict=True))
    prompts = []
    for index, item in enumerate(requests):
        body = item["body"]
        text = texts[index] if index in texts else body["prompt"]
        limit = min(
            max_tokens, body.get("max_completion_tokens", body.get("max_tokens")) or max_tokens
        )
        prompts.append(Prompt(item["custom_id"], tokenizer.encode(text), limit))
    try:  # the coordinator's own checks, here first: a long prompt is named by its line
        read_prompts(encode_prompts(prompts), str(path), info.vocab_size, info.context, max_tokens)
    except BadPrompts as exc:
        raise InvalidArgumentError(
            exc.code, str(exc).replace(f"{path} line", f"{path} request")
        ) from None
    return prompts


def _template_error(
    tokenizer: Tokenizer, path: Path | str, index: int, exc: "chat_template.TemplateFailed"
) -> InvalidArgumentError:
    """A template that fails on one request's messages: BAD_PROMPTS naming the request.
    One that does not compile, loops or grows too large: BAD_MODEL naming its file."""
    source = tokenizer.folder / "tokenizer_config.json"
    if exc.kind == "render" and index >= 0:
        return InvalidArgumentError("BAD_PROMPTS", f"{path} request {index + 1}: {exc} ({source})")
    where = f" (rendering request {index + 1} of {path})" if index >= 0 else ""
    return InvalidArgumentError(
        "BAD_MODEL",
        f"{source}: {exc}{where}; nothing was uploaded. Is this model folder from a source you trust?",
    )


@dataclass(frozen=True)
class Prepared:
    """A generation job checked and tokenized, nothing uploaded yet: what a submit or an
    estimate uploads and sends."""

    files: dict[str, Path]  # the model folder's files, by input name
    prompt_files: list[tuple[str, bytes]]  # the tokenized prompts, by input name
    params: dict[str, Any]
    requirements: Requirements
    tokenizer: Tokenizer
    requests: list[dict[str, Any]]
    prompts: list[Prompt]


def _requests(
    prompts: "str | os.PathLike[str] | Iterable[dict[str, Any]]", temperature: float, seed: int
) -> tuple[list[dict[str, Any]], Path | str]:
    """The batch file's requests (or the dicts given), checked, and the name errors use."""
    if isinstance(prompts, str | os.PathLike):
        path = Path(prompts)
        with open(path, "rb") as f:
            return read_batch(_utf8_lines(f, path), path, temperature=temperature, seed=seed), path
    dumped = (json.dumps(r) for r in prompts)
    return read_batch(dumped, "prompts", temperature=temperature, seed=seed), "prompts"


def prompt_files(encoded: list[Prompt]) -> list[tuple[str, bytes]]:
    """The job's prompt inputs, by input name: PROMPTS_PER_FILE tokenized prompts each."""
    return [
        (
            f"prompts_{index // PROMPTS_PER_FILE:06d}",
            encode_prompts(encoded[index : index + PROMPTS_PER_FILE]),
        )
        for index in range(0, len(encoded), PROMPTS_PER_FILE)
    ]


def prepare(
    model_dir: "str | os.PathLike[str]",
    prompts: "str | os.PathLike[str] | Iterable[dict[str, Any]]",
    *,
    max_tokens: int = 256,
    temperature: float = 0.0,
    seed: int = 0,
    precision: str = "fp32",
    device: str = "",
    min_vram_gb: float = 0,
    task_tokens: int | None = None,
) -> Prepared:
    """Checks the options, the model folder and the requests, and tokenizes the prompts;
    any mistake is refused here, before anything is uploaded."""
    if precision not in PRECISIONS:
        raise InvalidArgumentError("BAD_PARAMS", f"precision must be one of {list(PRECISIONS)}")
    check_job(max_tokens, temperature, seed, task_tokens)
    model_dir = Path(model_dir)
    files, info = check(model_dir)
    requests, path = _requests(prompts, temperature, seed)
    tokenizer = Tokenizer(model_dir)
    encoded = tokenize(requests, tokenizer, info, max_tokens, path)
    params: dict[str, Any] = {
        "max_tokens": max_tokens,
        "temperature": temperature,
        "seed": seed,
        "precision": precision,
    }
    if task_tokens is not None:
        params["task_tokens"] = task_tokens
    need = info.memory_bytes(precision, task_tokens or 16_384)
    requirements = Requirements(
        device_kind=DeviceKind(device) if device else DeviceKind.ANY,
        min_memory_bytes=max(need, int(min_vram_gb * 2**30)),
    )
    return Prepared(
        files, prompt_files(encoded), params, requirements, tokenizer, requests, encoded
    )


def decode_completions(
    tokenizer: Tokenizer, prompts: list[Prompt], first: int, completions_json: bytes
) -> list[Completion]:
    """A finished task's completions (its completions.json), decoded; `first`: the index
    of its first request. A completion for another request than the one at its place is
    refused (BAD_RESULT)."""
    done = []
    for index, item in enumerate(json.loads(completions_json)["completions"], start=first):
        prompt = prompts[index]
        if item["custom_id"] != prompt.custom_id:
            raise JobFailedError("BAD_RESULT", f"completion {index} is for {item['custom_id']!r}")
        tokens = [int(t) for t in item["tokens"]]
        done.append(
            Completion(
                prompt.custom_id,
                tokenizer.decode(tokens),
                tokens,
                str(item["finish_reason"]),
                len(prompt.input_ids),
            )
        )
    return done


def batch_line(request: dict[str, Any], done: Completion, job_id: str) -> dict[str, Any]:
    chat = "messages" in request["body"]
    choice: dict[str, Any] = {"index": 0, "finish_reason": done.finish_reason}
    if chat:
        choice["message"] = {"role": "assistant", "content": done.text}
    else:
        choice["text"] = done.text
    body = {
        "id": f"cmpl-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion" if chat else "text_completion",
        "model": request["body"].get("model", ""),
        "choices": [choice],
        "usage": {
            "prompt_tokens": done.prompt_tokens,
            "completion_tokens": len(done.tokens),
            "total_tokens": done.prompt_tokens + len(done.tokens),
        },
    }
    return {
        "id": f"batch_req_{uuid.uuid4().hex[:24]}",
        "custom_id": done.custom_id,
        "response": {"status_code": 200, "request_id": job_id, "body": body},
        "error": None,
    }


__all__ = [
    "Completion",
    "Prepared",
    "Tokenizer",
    "batch_line",
    "decode_completions",
    "prepare",
    "prompt_files",
    "read_batch",
    "tokenize",
]
