"""Tensor check calibration: honest inference outputs against cheap ones, through the
coordinator's own decoding (safetensors bytes, bf16 included, with numpy) and rule.

Three small models run on the CPU with torch: a classifier trained for a few hundred
steps (confident logits), a random transformer encoder 12 blocks deep, like ViT-B
(near-tied logits, plus its hidden states as a second output), and a random
convolutional net. Each precision runs as a
worker runs it: fp32; tf32 emulated (matmul and convolution operands rounded to 10
mantissa bits, float32 accumulation, as tensor cores do); fp16 and bf16 with torch's own
CPU kernels (model and inputs cast).

- honest pairs, per shard and precision: the precision on one batch split and thread
  count against the same on another; and against a more exact machine (float32 rounded
  to the precision's dtype; for fp32, float64 rounded to float32);
- cheap answers: half the rows zeroed; every row zeroed but the largest; a clear argmax
  flipped (the top two logits of the most confident row swapped); a close one flipped
  (the least confident row whose top two, swapped, close at least 1.2 times the tie, the
  largest-difference tolerance: when its gap is under that tolerance, only argmax
  catches it); noise
  added (10% of each row's RMS); the model without its last block; a lower precision than
  claimed, cast to the claimed dtype (tf32 for fp32, bf16 for tf32, 8-bit floats, i.e. 3
  mantissa bits, for fp16 and bf16); another shard's output.

There is no GPU here: GPU kernels (and their accumulation orders) are not measured.

    python bench/tensors.py [--shards 24] [--samples 32]

Prints a table and saves it (txt and json) under bench/results/.
"""

import argparse
import copy
import json
import math
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save
from torch import nn
from torch.nn import functional as F

from sparegrid.coordinator.services import tensorcheck
from sparegrid.wire.tensors import decode

RESULTS = Path(__file__).parent / "results"
PRECISIONS = ("fp32", "tf32", "fp16", "bf16")
DTYPES = {
    "fp32": torch.float32,
    "tf32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
}
MANTISSA: dict[str, int | None] = {"tf32": 10, "fp8": 3}
# what a node would run to go faster than it claims: TF32 tensor cores for fp32, 16-bit
# for TF32, 8-bit floats (emulated: 3 mantissa bits) for fp16 and bf16
LOWER = {"fp32": "tf32", "tf32": "bf16", "fp16": "fp8", "bf16": "fp8"}
OLD_TOLERANCES = {"fp32": 1e-5, "tf32": 5e-3, "fp16": 2e-2, "bf16": 5e-2}


class Rounding:
    """Mantissa bits kept in matmul and convolution operands (None: as the dtype is)."""

    bits: int | None = None


def rounded(x: torch.Tensor) -> torch.Tensor:
    bits = Rounding.bits
    if bits is None or x.dtype != torch.float32:
        return x
    drop = 23 - bits
    raw = x.contiguous().view(torch.int32)
    half = 1 << (drop - 1)
    raw = ((raw + half) >> drop) << drop  # round to nearest (ties away), sign intact
    return raw.view(torch.float32)


class Linear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(rounded(x), rounded(self.weight), self.bias)


class Conv(nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(rounded(x), rounded(self.weight), self.bias)


class Classifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            [
                nn.Sequential(Linear(64, 256), nn.GELU(), nn.LayerNorm(256)),
                nn.Sequential(Linear(256, 256), nn.GELU(), nn.LayerNorm(256)),
            ]
        )
        self.head = Linear(256, 10)
        self.depth = 2

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        for block in self.blocks[: self.depth]:
            x = block(x)
        return (self.head(x),)


class Block(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv, self.out = Linear(d, 3 * d), Linear(d, d)
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.mlp = nn.Sequential(Linear(d, 4 * d), nn.GELU(), Linear(4 * d, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)
        q, k, v = (z.reshape(b, t, self.heads, -1).transpose(1, 2) for z in (q, k, v))
        scores = torch.matmul(rounded(q), rounded(k.transpose(-1, -2))) / math.sqrt(d // self.heads)
        attn = torch.matmul(rounded(scores.softmax(-1)), rounded(v))
        x = x + self.out(attn.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.norm2(x))


class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = Linear(32, 64)
        self.blocks = nn.ModuleList([Block(64, 4) for _ in range(12)])  # ViT-B's depth
        self.norm = nn.LayerNorm(64)
        self.head = Linear(64, 100)
        self.depth = 12

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        h = self.embed(x)
        for block in self.blocks[: self.depth]:
            h = block(h)
        h = self.norm(h)
        return self.head(h.mean(dim=1)), h


class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            [
                nn.Sequential(Conv(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)),
                nn.Sequential(Conv(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)),
                nn.Sequential(Conv(64, 64, 3, padding=1), nn.ReLU()),
            ]
        )
        self.head = Linear(64, 10)
        self.depth = 3

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        for block in self.blocks[: self.depth]:
            x = block(x)
        return (self.head(x.mean(dim=(2, 3))),)


def trained_classifier(gen: torch.Generator) -> tuple[Classifier, Callable[[int], torch.Tensor]]:
    """A classifier trained on ten Gaussian clusters: confident logits, as a real one has."""
    centres = torch.randn(10, 64, generator=gen) * 1.5
    model = Classifier()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(300):
        labels = torch.randint(0, 10, (128,), generator=gen)
        x = centres[labels] + torch.randn(128, 64, generator=gen)
        loss = F.cross_entropy(model(x)[0], labels)
        opt.zero_grad()
        loss.backward()
        opt.step()

    def inputs(n: int) -> torch.Tensor:
        return centres[torch.randint(0, 10, (n,), generator=gen)] + torch.randn(
            n, 64, generator=gen
        )

    return model.eval(), inputs


def models(seed: int) -> dict[str, tuple[nn.Module, Callable[[int], torch.Tensor]]]:
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    classifier = trained_classifier(gen)
    encoder = Encoder().eval()
    conv = ConvNet().eval()
    return {
        "classifier (trained)": classifier,
        "encoder (random)": (encoder, lambda n: torch.randn(n, 16, 32, generator=gen)),
        "convnet (random)": (conv, lambda n: torch.randn(n, 3, 32, 32, generator=gen)),
    }


def run(
    model: nn.Module,
    x: torch.Tensor,
    mode: str,
    batch: int,
    threads: int,
    out_dtype: torch.dtype | None = None,
) -> dict[str, torch.Tensor]:
    """The model's outputs at a precision `mode` (a precision, "fp64" or "fp8"), in
    batches of `batch`, on `threads` threads; cast to `out_dtype` when given."""
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp64": torch.float64}.get(
        mode, torch.float32
    )
    torch.set_num_threads(threads)
    Rounding.bits = MANTISSA.get(mode)
    m = copy.deepcopy(model).to(dtype)  # casting back would not restore the weights
    try:
        with torch.no_grad():
            parts = [m(x[i : i + batch].to(dtype)) for i in range(0, len(x), batch)]
    finally:
        Rounding.bits = None
    outs = [torch.cat([p[k] for p in parts]) for k in range(len(parts[0]))]
    dtype = out_dtype or dtype
    return {f"output_{k}": o.to(dtype).contiguous() for k, o in enumerate(outs)}


def cheap_answers(
    honest: dict[str, torch.Tensor],
    other_shard: dict[str, torch.Tensor],
    truncated: dict[str, torch.Tensor],
    lower: dict[str, torch.Tensor],
    tol: float,
    gen: torch.Generator,
) -> dict[str, dict[str, torch.Tensor]]:
    logits = honest["output_0"].float()
    top = logits.topk(2, dim=-1).values
    scale = logits.abs().max(dim=-1).values
    gaps = (top[:, 0] - top[:, 1]) / scale

    def flip(row: int) -> dict[str, torch.Tensor]:
        out = logits.clone()
        i, j = out[row].topk(2).indices
        out[row, i], out[row, j] = out[row, j].clone(), out[row, i].clone()
        return {**honest, "output_0": out.to(honest["output_0"].dtype)}

    def each(f: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: f(v.float()).to(v.dtype) for k, v in honest.items()}

    def keep_largest(v: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(v)
        row = int(v.reshape(len(v), -1).abs().max(dim=1).values.argmax())
        out[row] = v[row]
        return out

    def half_zero(v: torch.Tensor) -> torch.Tensor:
        out = v.clone()
        out[::2] = 0
        return out

    def noisy(v: torch.Tensor) -> torch.Tensor:
        rms = v.reshape(len(v), -1).pow(2).mean(dim=1).sqrt()
        noise = torch.randn(v.shape, generator=gen) * 0.1
        return v + noise * rms.reshape(-1, *([1] * (v.dim() - 1)))

    # the clearest answer, and the least clear one that is not a tie (swapped, it closes
    # 1.2x the tolerance)
    clear = gaps >= 1.2 * tol
    close = int(torch.where(clear, gaps, torch.inf).argmin()) if clear.any() else None
    flips = {"clear argmax flipped": flip(int(gaps.argmax()))}
    if close is not None:
        flips["close argmax flipped (swap 1.2x the tie)"] = flip(close)
    return {
        **flips,
        "half the rows zeroed": each(half_zero),
        "zeroed but the largest row": each(keep_largest),
        "noise added (10% of row RMS)": each(noisy),
        "last block skipped": truncated,
        "lower precision than claimed": lower,
        "another shard's output": other_shard,
    }


def compare(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], precision: str) -> Any:
    left, right = decode(save(a)), decode(save(b))  # the coordinator's decoding
    verdict = tensorcheck.compare(left, right, precision)
    return verdict, _old_rule(left, right, precision), tensorcheck.stats(left, right)


def _old_rule(left: Any, right: Any, precision: str) -> bool:
    """The rule before this change: largest difference over the tensor's largest magnitude."""
    for name, x in left.items():
        a, b = x.values.astype(np.float64), right[name].values.astype(np.float64)
        scale = max(np.abs(a).max(), np.abs(b).max())
        if scale and np.abs(a - b).max() / scale > OLD_TOLERANCES[precision]:
            return False
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=24, help="shards per model and precision")
    parser.add_argument("--samples", type=int, default=32, help="samples per shard")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    start = time.perf_counter()
    gen = torch.Generator().manual_seed(args.seed + 1)
    rows: list[dict[str, Any]] = []

    def add(model: str, precision: str, cls: str, verdict: Any, old: bool, worst: Any) -> None:
        rows.append(
            {
                "model": model,
                "precision": precision,
                "class": cls,
                "agree": verdict.agree,
                "old_rule_agree": old,
                "rule": verdict.metrics.get("rule", ""),
                "rms": worst["rms"],
                "max": worst["max"],
                "detail": verdict.detail,
            }
        )

    for name, (model, make) in models(args.seed).items():
        shards = [make(args.samples) for _ in range(args.shards + 1)]
        for precision in PRECISIONS:
            tol = tensorcheck.TOLERANCES[precision].max / 2  # a swap moves 2x the gap
            mode = precision
            lower_mode = LOWER[precision]
            out_dtype = DTYPES[precision]
            outputs = [run(model, x, mode, len(x), 2) for x in shards]
            for s in range(args.shards):
                x = shards[s]
                other = run(model, x, mode, 8, 1)
                exact_mode = "fp64" if precision == "fp32" else "fp32"
                exact = run(model, x, exact_mode, len(x), 2, out_dtype)
                for cls, b in (
                    ("honest: other batch split and threads", other),
                    ("honest: a more exact machine", exact),
                ):
                    add(name, precision, cls, *compare(outputs[s], b, precision))
                depth = model.depth  # type: ignore[attr-defined]
                model.depth = depth - 1  # type: ignore[assignment]
                try:
                    truncated = run(model, x, mode, len(x), 2)
                finally:
                    model.depth = depth  # type: ignore[assignment]
                lower = run(model, x, lower_mode, len(x), 2, out_dtype)
                cheap = cheap_answers(outputs[s], outputs[s + 1], truncated, lower, tol, gen)
                for cls, b in cheap.items():
                    add(name, precision, f"cheap: {cls}", *compare(outputs[s], b, precision))
        print(f"{name}: {time.perf_counter() - start:.0f} s", flush=True)
    text = report(rows, args, time.perf_counter() - start)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (RESULTS / f"tensors-{stamp}.txt").write_text(text + "\n")
    (RESULTS / f"tensors-{stamp}.json").write_text(
        json.dumps(
            {
                "args": vars(args),
                "rows": rows,
                "tolerances": {p: [t.rms, t.max] for p, t in tensorcheck.TOLERANCES.items()},
            },
            indent=1,
        ).replace("Infinity", '"inf"')
        + "\n"
    )
    return 0


def report(rows: list[dict[str, Any]], args: Any, seconds: float) -> str:
    tolerances = ", ".join(f"{p} {t.rms:g} / {t.max:g}" for p, t in tensorcheck.TOLERANCES.items())
    lines = [
        f"tensors: 3 models x 4 precisions x {args.shards} shards of {args.samples} samples, "
        f"CPU, torch {torch.__version__}; {seconds:.0f} s",
        "no GPU here: GPU kernels are not measured (tf32 is emulated by rounding operands)",
        f"tolerances, a row's RMS difference over its RMS / largest difference over its "
        f"largest magnitude: {tolerances}; argmax may flip only where the two values closed "
        "no more than the second, in total",
        "",
        f"{'precision':9} {'class':46} {'n':>4} {'agree':>5} {'old':>4}  "
        f"{'row RMS error min..max':>24} {'largest min..max':>22}  margin (RMS, largest)",
    ]
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["precision"], r["class"]), []).append(r)
    order = sorted(groups.items(), key=lambda g: (PRECISIONS.index(g[0][0]), g[0][1]))
    for (precision, cls), group in order:
        tol = tensorcheck.TOLERANCES[precision]
        cells, margin = [], []
        for stat, limit in (("rms", tol.rms), ("max", tol.max)):
            values = [r[stat] for r in group]
            lo, hi = min(values), max(values)
            cells.append(f"{lo:>10.3g}..{hi:<10.3g}")
            if cls.startswith("honest"):
                margin.append(f"{limit / hi:.1f}x under" if hi else "exact")
            else:
                margin.append(f"{lo / limit:.1f}x")
        lines.append(
            f"{precision:9} {cls:46} {len(group):>4} {sum(r['agree'] for r in group):>5} "
            f"{sum(r['old_rule_agree'] for r in group):>4}  {cells[0]:>24} {cells[1]:>22}  "
            + ", ".join(margin)
        )
    honest = [r for r in rows if r["class"].startswith("honest")]
    cheap = [r for r in rows if r["class"].startswith("cheap")]
    lines += [
        "",
        f"honest shards: {len(honest)}, rejected: {sum(not r['agree'] for r in honest)} "
        f"(old rule: {sum(not r['old_rule_agree'] for r in honest)})",
        f"cheap answers: {len(cheap)}, accepted: {sum(r['agree'] for r in cheap)} "
        f"(old rule: {sum(r['old_rule_agree'] for r in cheap)})",
        "(margin: honest = tolerance over the largest honest error; cheap = the smallest "
        "cheap error over the tolerance: under 1x, that statistic alone does not catch all "
        "of the class, and another one or argmax does)",
    ]
    for r in [r for r in honest if not r["agree"]][:15]:
        lines.append(f"  REJECTED {r['model']} {r['precision']} {r['class']}: {r['detail']}")
    for r in [r for r in cheap if r["agree"]][:15]:
        lines.append(f"  ACCEPTED {r['model']} {r['precision']} {r['class']}: {r['detail']}")
    lines.append(f"(machine: {platform.node()}, {platform.processor() or platform.machine()})")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
