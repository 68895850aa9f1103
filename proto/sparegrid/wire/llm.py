"""Language models as data: what the SDK, the coordinator and the worker agree a model is.

A model is a folder's files, uploaded as content-addressed inputs: `config.json` (the
Hugging Face config), `tokenizer.json` (a `tokenizers` file) and safetensors weights. No
file of it is ever code: the architecture must be one of `ARCHITECTURES`, a config naming
remote code (`auto_map`) is refused, and pickled weights (`.bin`, `.pt`, ...) are refused
rather than loaded. `check_model` reads only JSON and safetensors headers (no torch), so
the SDK and the coordinator refuse a bad model before anything is charged or sent.

Prompts travel as token ids, tokenized by the client (which has the tokenizer and the
chat template): a prompts file is JSON lines of `{"custom_id", "input_ids", "max_tokens"}`.
`read_prompts` checks one, naming the line of the first fault.
"""

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sparegrid.wire.tensors import BadTensors, TensorHeader, read_header

# Hugging Face class -> the family it belongs to. The worker builds these classes itself.
ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
    "GPTNeoXForCausalLM": "gpt_neox",
    "Phi3ForCausalLM": "phi3",
}
# config keys that would load code or kernels from elsewhere (the Hub, other packages)
CODE_KEYS = frozenset(
    {"quantization_config", "_attn_implementation", "attn_implementation", "custom_pipelines"}
    | {"experts_implementation", "_experts_implementation"}  # a Hub kernel by name
)
PICKLED = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
CONFIG, TOKENIZER, WEIGHTS = "config", "tokenizer", "weights_"
MAX_CONFIG_BYTES = 1 << 20
MAX_TOKENIZER_BYTES = 64 << 20
MAX_WEIGHT_FILES = 1000
DTYPE_BYTES = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8, "I64": 8, "I32": 4, "U8": 1, "I8": 1}
PRECISIONS = {"fp32": 4, "bf16": 2, "fp16": 2}
MAX_PROMPT_LINE = 4 << 20
MAX_PROMPTS_FILE = 256 << 20
# a task's prompts padded to the longest, plus room for the most any may generate
MAX_TASK_TOKENS = 1 << 18
MAX_NEW_TOKENS = 32_768  # a request's tokens to generate, at most
_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


class BadModel(ValueError):
    """A model folder is refused; `code` is the stable reason."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def supported() -> str:
    return ", ".join(ARCHITECTURES)


@dataclass(frozen=True)
class ModelInfo:
    architecture: str
    vocab_size: int  # rows of the embedding (config's vocab_size)
    tokenizer_size: int  # ids the tokenizer can produce
    context: int  # max_position_embeddings
    hidden_size: int
    layers: int
    parameters: int
    weight_bytes: int  # as stored
    eos: tuple[int, ...]
    config: dict[str, Any] = field(repr=False, default_factory=dict)

    def memory_bytes(self, precision: str, tokens: int) -> int:
        """Device memory to hold the weights at `precision`, a KV cache of `tokens` and
        their logits: a check's prefill scores every position of a task against the whole
        vocabulary (a model of 8 wide embeddings over 1M ids is 64 MB of weights and 4 MB
        of logits per token)."""
        per = PRECISIONS.get(precision, 4)
        heads = int(self.config.get("num_attention_heads") or 1)
        kv_heads = int(self.config.get("num_key_value_heads") or heads)
        head_dim = int(self.config.get("head_dim") or self.hidden_size // heads)
        kv = 2 * self.layers * kv_heads * head_dim * per * tokens
        logits = tokens * self.vocab_size * 4  # float32 where sampling reads them
        return self.parameters * per + kv + logits + (256 << 20)  # plus the runtime's own


def check_config(raw: bytes) -> dict[str, Any]:
    if len(raw) > MAX_CONFIG_BYTES:
        raise BadModel("BAD_MODEL", f"config.json is over {MAX_CONFIG_BYTES} bytes")
    try:
        config = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadModel("BAD_MODEL", f"config.json is not JSON: {exc}") from None
    if not isinstance(config, dict):
        raise BadModel("BAD_MODEL", "config.json must be a JSON object")
    code = sorted(CODE_KEYS & set(config))
    if code:
        raise BadModel(
            "UNSUPPORTED_MODEL",
            f"config.json sets {code}: models here are plain weights, run by the "
            f"worker's own attention and no quantization or kernel code; supported "
            f"architectures: {supported()}",
        )
    if "auto_map" in config or config.get("trust_remote_code"):
        raise BadModel(
            "UNSUPPORTED_MODEL",
            "config.json names remote code (auto_map): no code from a model ever runs; "
            f"supported architectures: {supported()}",
        )
    archs = config.get("architectures")
    if not isinstance(archs, list) or len(archs) != 1 or archs[0] not in ARCHITECTURES:
        raise BadModel(
            "UNSUPPORTED_MODEL",
            f"architecture {archs!r} is not supported; supported: {supported()}",
        )
    for key in ("vocab_size", "hidden_size", "num_hidden_layers", "max_position_embeddings"):
        value = config.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise BadModel("BAD_MODEL", f"config.json: {key!r} must be a positive integer")
    return config


def tokenizer_size(raw: bytes) -> int:
    """How many ids a tokenizer.json can produce: its vocabulary and added tokens."""
    if len(raw) > MAX_TOKENIZER_BYTES:
        raise BadModel("BAD_TOKENIZER", f"tokenizer.json is over {MAX_TOKENIZER_BYTES} bytes")
    try:
        spec = json.loads(raw)
        vocab = spec["model"]["vocab"]
        # a list's ids are its positions: counted, not built (a 64 MiB list of ids built
        # as a range took the coordinator 1.5 GB and 15 s)
        ids = vocab.values() if isinstance(vocab, dict) else [len(vocab) - 1] if vocab else []
        added = [int(t["id"]) for t in spec.get("added_tokens") or []]
    except (UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise BadModel("BAD_TOKENIZER", f"tokenizer.json is not a tokenizers file: {exc}") from None
    if not ids or not all(isinstance(i, int) and i >= 0 for i in (*ids, *added)):
        raise BadModel("BAD_TOKENIZER", "tokenizer.json has no vocabulary")
    return max(max(ids), *added, 0) + 1


def _eos(config: dict[str, Any]) -> tuple[int, ...]:
    eos = config.get("eos_token_id")
    items = eos if isinstance(eos, list) else [eos]
    return tuple(i for i in items if isinstance(i, int) and not isinstance(i, bool))


def check_model(files: Mapping[str, Path]) -> ModelInfo:
    """Checks a model's files by input name: "config", "tokenizer", "weights_000", ...;
    raises BadModel naming what is wrong."""
    if CONFIG not in files or TOKENIZER not in files:
        raise BadModel("BAD_MODEL", "a model needs config.json and tokenizer.json")
    config = check_config(files[CONFIG].read_bytes())
    size = tokenizer_size(files[TOKENIZER].read_bytes())
    weights = sorted(n for n in files if n.startswith(WEIGHTS))
    if not weights:
        raise BadModel("BAD_MODEL", "no safetensors weights")
    if len(weights) > MAX_WEIGHT_FILES:
        raise BadModel("BAD_MODEL", f"more than {MAX_WEIGHT_FILES} weight files")
    tensors: dict[str, TensorHeader] = {}
    for name in weights:
        try:
            tensors.update(read_header(files[name]))
        except BadTensors as exc:
            raise BadModel("BAD_MODEL", f"weights are not safetensors ({name}): {exc}") from None
    return _info(config, size, tensors)


def _info(config: dict[str, Any], size: int, tensors: dict[str, TensorHeader]) -> ModelInfo:
    vocab = int(config["vocab_size"])
    embedding = [
        t for n, t in tensors.items() if n.endswith(("embed_tokens.weight", "embed_in.weight"))
    ]
    if not embedding:
        raise BadModel("BAD_MODEL", "the weights hold no token embedding")
    rows = embedding[0].shape[0]
    if rows != vocab:
        raise BadModel(
            "MODEL_MISMATCH",
            f"the embedding has {rows} rows but config.json says vocab_size {vocab}",
        )
    check_sizes(config, tensors)
    if size > vocab:
        raise BadModel(
            "TOKENIZER_MISMATCH",
            f"the tokenizer produces ids up to {size - 1} but the model has {vocab} "
            "embeddings: this tokenizer belongs to another model",
        )
    parameters = 0
    stored = 0
    for t in tensors.values():
        count = 1
        for d in t.shape:
            count *= d
        parameters += count
        stored += t.end - t.begin
    return ModelInfo(
        architecture=config["architectures"][0],
        vocab_size=vocab,
        tokenizer_size=size,
        context=int(config["max_position_embeddings"]),
        hidden_size=int(config["hidden_size"]),
        layers=int(config["num_hidden_layers"]),
        parameters=parameters,
        weight_bytes=stored,
        eos=_eos(config),
        config=config,
    )


def check_sizes(config: dict[str, Any], tensors: Mapping[str, TensorHeader]) -> None:
    """The weights are the model config.json describes: the embedding is vocab_size x
    hidden_size and there are weights for exactly its num_hidden_layers layers. A worker
    builds the model from config.json and fills what the weights lack with new memory, so
    a config larger than its weights (10,000 layers beside the weights of 2) would make a
    worker allocate far more than the weights, and the job's memory estimate, say."""
    embedding = [
        t for n, t in tensors.items() if n.endswith(("embed_tokens.weight", "embed_in.weight"))
    ]
    want = (int(config["vocab_size"]), int(config["hidden_size"]))
    if not embedding or embedding[0].shape != want:
        shape = list(embedding[0].shape) if embedding else "missing"
        raise BadModel(
            "MODEL_MISMATCH",
            f"the token embedding is {shape} but config.json says vocab_size x hidden_size "
            f"{list(want)}: the weights belong to another model",
        )
    layers = int(config["num_hidden_layers"])
    found = {int(m.group(1)) for n in tensors if (m := _LAYER.search(n))}
    if found != set(range(layers)):
        have = f"layers {min(found)} to {max(found)} ({len(found)})" if found else "no layers"
        raise BadModel(
            "MODEL_MISMATCH",
            f"config.json says num_hidden_layers {layers} but the weights hold {have}: "
            "the weights belong to another model",
        )


def model_files(folder: Path) -> dict[str, Path]:
    """A model folder's files by input name; refuses pickled weights and remote code."""
    if not folder.is_dir():
        raise BadModel("BAD_MODEL", f"{folder} is not a folder")
    pickled = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLED)
    if pickled:
        raise BadModel(
            "UNSAFE_MODEL",
            f"pickled weights {pickled} are never loaded (unpickling runs code); "
            "save the model as safetensors",
        )
    code = sorted(p.name for p in folder.iterdir() if p.suffix == ".py")
    if code:
        raise BadModel(
            "UNSUPPORTED_MODEL",
            f"the folder holds code {code}; no code from a model ever runs; "
            f"supported architectures: {supported()}",
        )
    files = {CONFIG: folder / "config.json", TOKENIZER: folder / "tokenizer.json"}
    for name, path in files.items():
        if not path.is_file():
            raise BadModel("BAD_MODEL", f"{folder} has no {path.name} ({name})")
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        raise BadModel("BAD_MODEL", f"{folder} has no .safetensors weights")
    files.update({f"{WEIGHTS}{i:03d}": p for i, p in enumerate(weights)})
    return files


@dataclass(frozen=True)
class Prompt:
    custom_id: str
    input_ids: list[int]
    max_tokens: int


class BadPrompts(ValueError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def read_prompts(raw: bytes, label: str, vocab: int, context: int, max_tokens: int) -> list[Prompt]:
    """A prompts file's lines, each checked: ids within the vocabulary, and the prompt with
    its completion within the model's context."""
    prompts = []
    for number, line in enumerate(raw.splitlines(), start=1):
        where = f"{label} line {number}"
        if len(line) > MAX_PROMPT_LINE:
            raise BadPrompts("BAD_PROMPTS", f"{where}: over {MAX_PROMPT_LINE} bytes")
        try:
            item = json.loads(line)
            custom_id, ids = item["custom_id"], item["input_ids"]
            limit = item.get("max_tokens", max_tokens)
        except (UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
            raise BadPrompts("BAD_PROMPTS", f"{where}: not a prompt ({exc})") from None
        ok = isinstance(ids, list) and ids and all(type(i) is int and 0 <= i < vocab for i in ids)
        if not isinstance(custom_id, str) or not ok:
            raise BadPrompts(
                "BAD_PROMPTS", f"{where}: custom_id must be text and input_ids ids below {vocab}"
            )
        if type(limit) is not int or not 1 <= limit <= max_tokens:
            raise BadPrompts("BAD_PROMPTS", f"{where}: max_tokens must be 1 to {max_tokens}")
        if len(ids) + limit > context:
            raise BadPrompts(
                "PROMPT_TOO_LONG",
                f"{where} ({custom_id}): {len(ids)} prompt tokens + {limit} to generate "
                f"exceed the model's context of {context}",
            )
        prompts.append(Prompt(custom_id, ids, limit))
    if not prompts:
        raise BadPrompts("BAD_PROMPTS", f"{label} holds no prompts")
    return prompts


def encode_prompts(prompts: list[Prompt]) -> bytes:
    return b"".join(
        json.dumps(
            {"custom_id": p.custom_id, "input_ids": p.input_ids, "max_tokens": p.max_tokens},
            separators=(",", ":"),
        ).encode()
        + b"\n"
        for p in prompts
    )
