"""SDK and coordinator errors in the CLI's words: `batch_size=4` becomes `--batch-size 4`.

The SDK's checks and the coordinator's name the Python parameters and job params they
check (`batch_size must be 1..65536`, `'chunk' must be between 1 and 10000`); a user of
`sparegrid job submit` typed flags. `in_flags` rewrites those names in an error's message,
only where they read as a name: an identifier with an underscore, `NAME=VALUE`, a quoted
`'NAME'`, `NAME must` or `NAME 'VALUE' is` (at the start), so that a plain word such as "samples" in a sentence stays.
"""

import re
from collections.abc import Callable

from sparegrid.sdk import SparegridError

# parameter of the SDK or job param -> the `sparegrid job submit` flag that sets it
FLAGS = {
    "batch_size": "--batch-size",
    "shard_batches": "--shard-batches",
    "min_vram_gb": "--min-vram",
    "precision": "--precision",
    "max_attempts": "--max-attempts",
    "priority": "--priority",
    "replicas": "--replicas",
    "quorum": "--quorum",
    "webhook_url": "--webhook",
    "chunk": "--chunk",
    "samples": "--samples",
    "depth": "--depth",
    "resolution": "--resolution",
    "tiles": "--tiles",
    "temperature": "--temperature",
    "max_tokens": "--max-tokens",
    "task_tokens": "--task-tokens",
    "seed": "--seed",
    "sleep_ms": "--sleep-ms",
    "tasks": "--tasks",
    "data": "--data",
    "frames": "--frames",
    "blender": "--blender",
}


def _pattern(name: str) -> re.Pattern[str]:
    word = re.escape(name)
    alone = rf"(?<![\w'.\-]){word}\b"  # not part of a longer name, a quote or params.NAME
    forms = [
        rf"'{word}'(?= (?:values )?must)",
        rf"{alone}=(?=[^\s,;)])",
        rf"{alone}(?= must)",
        rf"^{word}(?= '[^']*' \w)",  # "resolution '64' is not WxH"
    ]
    if "_" in name:
        forms.append(rf"{alone}(?!')")
    return re.compile("|".join(forms))


_PATTERNS = {name: _pattern(name) for name in FLAGS}


# "checksum job: expects inputs ['data'], got none": the inputs a job kind takes
_EXPECTED_INPUTS = re.compile(r"expects inputs \[[^\]]*\], got [^;]*$")


def rewrite(message: str) -> str:
    """`message` with each parameter name it uses as a name replaced by its flag."""
    for name, pattern in _PATTERNS.items():
        message = pattern.sub(_replacer(FLAGS[name]), message)
    if _EXPECTED_INPUTS.search(message):
        message += "; give each with --input NAME=PATH (PATH alone is input 'data')"
    return message


def _replacer(flag: str) -> Callable[[re.Match[str]], str]:
    def replace(match: re.Match[str]) -> str:
        return flag + (" " if match[0].endswith("=") else "")  # batch_size=4: --batch-size 4

    return replace


def in_flags(exc: SparegridError) -> SparegridError:
    """`exc`, its message naming flags instead of parameters."""
    exc.message = rewrite(exc.message)
    exc.args = (exc.message,)
    return exc
