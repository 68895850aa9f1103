"""A model's chat template, rendered in a child Python process with a time and memory limit.

The template comes in the model folder, perhaps from a hub. jinja2's sandbox keeps it from
reaching files or Python's internals, but not from looping for hours (`{% for a in
range(99999) %}{% for b in range(99999) %}...`) or building a string of gigabytes
(`{{ "x" * 10**10 }}`). So the prompts are rendered by a child process: it stops itself
RENDER_SECONDS (plus PER_PROMPT_SECONDS a prompt) after it starts rendering, cannot map
more than MEMORY_BYTES (on Linux), refuses a prompt rendered to more than MAX_CHARS, and
is killed past a deadline that also allows for its start. The sandbox and its options are
the same as before, so a template renders to the same text.

This module imports the standard library only: the child runs this file as a script
(`python -P chat_template.py`), without importing the SDK.
"""

import json
import subprocess
import sys
from typing import Any

RENDER_SECONDS = 1.0
PER_PROMPT_SECONDS = 0.002
STARTUP_SECONDS = 20.0  # a busy machine's Python start, before the child's own clock runs
MEMORY_BYTES = 1 << 30  # plus 8 bytes per byte of input
MAX_CHARS = 1 << 22  # one rendered prompt (about a million tokens: past any context)


class TemplateFailed(Exception):
    """`kind`: "limit" (too long, too much memory, too large an output), "syntax" (the
    template does not compile) or "render" (it failed on request `index`'s messages)."""

    def __init__(self, kind: str, index: int, why: str) -> None:
        super().__init__(why)
        self.kind, self.index = kind, index


def render(
    template: str, special: dict[str, str], conversations: list[list[dict[str, str]]]
) -> list[str]:
    """Each conversation rendered, in order; TemplateFailed on the first that fails."""
    if not conversations:
        return []
    payload = json.dumps(
        {"template": template, "special": special, "conversations": conversations}
    ).encode()
    seconds = RENDER_SECONDS + PER_PROMPT_SECONDS * len(conversations)
    command = [sys.executable, "-P", __file__, str(seconds), str(MEMORY_BYTES + 8 * len(payload))]
    try:
        done = subprocess.run(
            command, input=payload, capture_output=True, timeout=STARTUP_SECONDS + seconds
        )
    except subprocess.TimeoutExpired:  # the child's clock did not stop it (no SIGALRM)
        raise TemplateFailed("limit", -1, _too_long(seconds)) from None
    try:
        answer = json.loads(done.stdout)
    except ValueError:
        tail = done.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
        why = f"exit status {done.returncode}" + (f": {tail[0]}" if tail[0] else "")
        if "MemoryError" in tail[0] or done.returncode < 0:
            why = _too_big()
        raise TemplateFailed("limit", -1, f"the chat template stopped ({why})") from None
    if "error" in answer:
        raise TemplateFailed(answer["kind"], answer["index"], answer["error"])
    return list(answer["texts"])


def _too_long(seconds: float) -> str:
    return (
        f"the chat template did not finish in {seconds:.1f} s: it loops for too long "
        "(nested loops over large ranges?)"
    )


def _too_big() -> str:
    return f"the chat template used more than {MEMORY_BYTES >> 20} MiB of memory"


class _TimeUp(BaseException):  # not an Exception: jinja2 does not catch or wrap it
    pass


def _child(seconds: float, memory: int) -> None:  # pragma: no cover (runs in the child)
    import signal

    try:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    except (ImportError, ValueError, OSError):
        pass  # no such limit here (Windows, macOS): the time limit still holds
    from jinja2 import TemplateSyntaxError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    request = json.loads(sys.stdin.buffer.read())
    out = sys.stdout

    def answer(value: dict[str, Any]) -> None:
        out.write(json.dumps(value))
        out.flush()

    def time_up(signum: int, frame: object) -> None:
        raise _TimeUp

    if hasattr(signal, "setitimer"):
        signal.signal(signal.SIGALRM, time_up)
        signal.setitimer(signal.ITIMER_REAL, seconds)
    index = -1
    try:
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        try:
            compiled = env.from_string(request["template"])
        except TemplateSyntaxError as exc:
            answer({"kind": "syntax", "index": -1, "error": f"the chat template: {exc}"})
            return
        texts = []
        for index, messages in enumerate(request["conversations"]):
            text = compiled.render(
                messages=messages, add_generation_prompt=True, **request["special"]
            )
            if len(text) > MAX_CHARS:
                why = f"the chat template rendered more than {MAX_CHARS:,} characters"
                answer({"kind": "limit", "index": index, "error": why})
                return
            texts.append(text)
    except _TimeUp:
        answer({"kind": "limit", "index": index, "error": _too_long(seconds)})
        return
    except MemoryError:
        answer({"kind": "limit", "index": index, "error": _too_big()})
        return
    except Exception as exc:
        why = f"the chat template failed: {type(exc).__name__}: {exc}"
        answer({"kind": "render", "index": index, "error": why})
        return
    if hasattr(signal, "setitimer"):
        signal.setitimer(signal.ITIMER_REAL, 0)
    answer({"texts": texts})


if __name__ == "__main__":  # pragma: no cover
    _child(float(sys.argv[1]), int(sys.argv[2]))
