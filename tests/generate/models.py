"""Tiny random-weight language models of each supported architecture, built locally.

Nothing is downloaded: a byte-level BPE tokenizer is trained here with `tokenizers` on a
few sentences, and each model is a transformers class built from a small config with
random weights, saved as config.json + model.safetensors + tokenizer.json.
"""

import json
from pathlib import Path
from typing import Any

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

TEXT = [
    "the quick brown fox jumps over the lazy dog",
    "volunteers lend their idle GPUs to run open-weight language models",
    "a prompt goes in and a completion comes out, one token at a time",
    "hello world, hello sparegrid, hello tokens",
] * 20
EOS = "</s>"

CONFIGS: dict[str, dict[str, Any]] = {
    "LlamaForCausalLM": {"model_type": "llama"},
    "MistralForCausalLM": {"model_type": "mistral"},
    "Qwen2ForCausalLM": {"model_type": "qwen2"},
    "Qwen3ForCausalLM": {"model_type": "qwen3", "head_dim": 16},
    "GPTNeoXForCausalLM": {"model_type": "gpt_neox", "rotary_pct": 0.5},
    "Phi3ForCausalLM": {"model_type": "phi3"},
}


def train_tokenizer(vocab: int = 300) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(TEXT, trainer)
    return tok


def build(
    folder: Path,
    architecture: str = "LlamaForCausalLM",
    *,
    seed: int = 0,
    hidden: int = 64,
    layers: int = 2,
    context: int = 256,
    tokenizer: Tokenizer | None = None,
    vocab: int | None = None,
) -> Path:
    """Saves a random model of `architecture` in `folder`; returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    tok = tokenizer or train_tokenizer()
    tok.save(str(folder / "tokenizer.json"))
    eos = tok.token_to_id(EOS)
    size = vocab or tok.get_vocab_size()
    extra = dict(CONFIGS[architecture])
    model_type = extra.pop("model_type")
    config = transformers.AutoConfig.for_model(
        model_type,
        vocab_size=size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=context,
        eos_token_id=eos,
        bos_token_id=eos,
        pad_token_id=eos,
        tie_word_embeddings=False,
        **extra,
    )
    config.architectures = [architecture]
    torch.manual_seed(seed)
    model = getattr(transformers, architecture)(config)
    with torch.no_grad():  # logits spread out enough that greedy choices are clear
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(3.0)
    model.save_pretrained(folder, safe_serialization=True)
    for extra_file in ("generation_config.json",):
        (folder / extra_file).unlink(missing_ok=True)
    return folder


def reference(
    folder: Path, prompts: list[list[int]], max_tokens: int, precision: str = "fp32"
) -> list[list[int]]:
    """Greedy completions of the same weights with transformers' own generate, batched
    with left padding as the worker batches them; each cut at its first EOS."""
    config = json.loads((folder / "config.json").read_text())
    eos = config["eos_token_id"]
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
    model = getattr(transformers, config["architectures"][0]).from_pretrained(folder, dtype=dtype)
    model.eval()
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), eos)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(p)
        mask[i, width - len(p) :] = 1
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max_tokens,
            do_sample=False,
            eos_token_id=eos,
            pad_token_id=eos,
        )
    rows = []
    for row in out[:, width:].tolist():
        cut = row.index(eos) + 1 if eos in row else len(row)
        rows.append(row[:cut])
    return rows
