"""Whether two results of a generate task agree, and whether a check confirms a result.

Two whole results agree when their completions are the same token ids (greedy and seeded
decoding are reproducible on one device type): "completions.json" is canonical JSON, so
equal digests decide without reading it. Fingerprints and meta.json are not compared.

A check (spotcheck.py) is a checker's one prefill over the prompts and the completions a
result claims: it confirms the result when, for every prompt,

- the claimed tokens are what the checker was asked to check (the result's own);
- the completion ends as it says: "stop" on an end-of-sequence token (and none before),
  "length" at the prompt's token limit;
- every claimed token was the argmax of what it was drawn from (the logits, plus the
  seeded noise when sampling; sampling.py on the worker), within `gap` (near-ties that
  another device's float noise may swap);
- the result's fingerprints (the largest entries of the final hidden state, every few
  tokens; fingerprint.py) match the checker's hidden states at the same positions: each
  committed index among the checker's largest 2k, and the values within the precision's
  tolerance, relative to the largest.

A cheaper model, another precision, or an edited or truncated completion fails one of
these (bench/generate.py measures it); honest nodes on other devices differ only by float
noise, which the tolerances (by precision) allow.
"""

import json
from dataclasses import dataclass
from typing import Any

COMPLETIONS, FINGERPRINTS, CHECK = "completions.json", "fingerprints.json", "check.json"
MAX_READ = 64 << 20


@dataclass(frozen=True)
class Tolerance:
    gap: float  # how far below the argmax a claimed token's score may be
    max_error: float  # largest |difference| of a fingerprint value / its largest value
    mean_error: float  # mean of those, over one fingerprint
    missing: int  # committed indices that may be absent from the checker's top 2k


TOLERANCES = {
    "fp32": Tolerance(gap=1e-3, max_error=2e-3, mean_error=2e-4, missing=0),
    "fp16": Tolerance(gap=5e-2, max_error=3e-2, mean_error=5e-3, missing=2),
    "bf16": Tolerance(gap=2.5e-1, max_error=1.5e-1, mean_error=2.5e-2, missing=4),
}


@dataclass(frozen=True)
class Found:
    agree: bool
    detail: str
    metrics: dict[str, Any]


def completions(data: bytes) -> list[dict[str, Any]]:
    rows = json.loads(data)["completions"]
    if not isinstance(rows, list):
        raise ValueError("completions is not a list")
    return rows


def same_tokens(a: bytes, b: bytes) -> Found:
    left, right = completions(a), completions(b)
    if len(left) != len(right):
        return Found(False, f"{len(left)} vs {len(right)} completions", {"rule": "count"})
    for i, (x, y) in enumerate(zip(left, right, strict=True)):
        if x != y:
            tx, ty = list(x.get("tokens", [])), list(y.get("tokens", []))
            at = next(
                (j for j, (p, q) in enumerate(zip(tx, ty, strict=False)) if p != q),
                min(len(tx), len(ty)),
            )
            detail = f"completion {i} ({x.get('custom_id')!r}) differs from token {at}"
            return Found(False, detail, {"rule": "tokens", "completion": i, "token": at})
    return Found(True, f"{len(left)} completions, same tokens", {"rule": "tokens"})


def confirm(params: dict[str, Any], result: dict[str, bytes], check: dict[str, Any]) -> Found:
    """Whether a checker's prefill (`check`: its params and check.json) confirms a result
    (its completions.json and fingerprints.json) of a task with `params`."""
    tol = TOLERANCES.get(str(params.get("precision", "fp32")), TOLERANCES["fp32"])
    rows = completions(result[COMPLETIONS])
    prints = json.loads(result[FINGERPRINTS])["rows"]
    claimed, found = check["params"]["claimed"], check["found"]["rows"]
    if [r.get("tokens") for r in rows] != claimed:
        return Found(False, "the check was of other tokens", {"rule": "claimed"})
    if not len(rows) == len(prints) == len(found):
        return Found(False, "the check does not cover every completion", {"rule": "count"})
    eos = set(params.get("eos") or [])
    k = int(params.get("k", 32))
    worst: dict[str, Any] = {"gap": 0.0, "max_error": 0.0, "mean_error": 0.0, "missing": 0}
    for i, (row, committed, mine) in enumerate(zip(rows, prints, found, strict=True)):
        where = f"completion {i} ({row.get('custom_id')!r})"
        ending = _ending(row, eos, mine.get("limit"))
        if ending:
            return Found(False, f"{where}: {ending}", {"rule": "ending", "completion": i})
        gap = float(mine["gap"])
        worst["gap"] = max(worst["gap"], gap)
        if not gap <= tol.gap:  # NaN included
            detail = f"{where}: token {mine['at']} was not the model's choice (gap {gap:.3g})"
            return Found(False, detail, {"rule": "argmax", "completion": i, **worst})
        wrong = _prints(committed, mine["fp"], k, tol, worst)
        if wrong:
            return Found(
                False, f"{where}: {wrong}", {"rule": "fingerprint", "completion": i, **worst}
            )
    detail = f"{len(rows)} completions confirmed by one prefill (worst gap {worst['gap']:.2g})"
    return Found(True, detail, {"rule": "prefill", **worst})


def _ending(row: dict[str, Any], eos: set[int], limit: int | None) -> str:
    tokens, reason = list(row.get("tokens") or []), row.get("finish_reason")
    early = [t for t in tokens[:-1] if t in eos]
    if early:
        return "an end-of-sequence token before its end"
    if reason == "stop" and (not tokens or tokens[-1] not in eos):
        return "says it stopped but does not end on an end-of-sequence token"
    if reason == "length" and (limit is not None and len(tokens) != limit):
        return f"says it reached its limit but has {len(tokens)} of {limit} tokens"
    if reason not in ("stop", "length"):
        return f"unknown finish reason {reason!r}"
    return ""


def _prints(
    committed: list[dict[str, Any]],
    mine: list[dict[str, Any]],
    k: int,
    tol: Tolerance,
    worst: dict[str, Any],
) -> str:
    if [c["pos"] for c in committed] != [m["pos"] for m in mine]:
        return "fingerprints at other positions"
    for c, m in zip(committed, mine, strict=True):
        idx, val = list(c["idx"]), [float(v) for v in c["val"]]
        if len(idx) != k or len(val) != k or len(set(idx)) != k:
            return f"a malformed fingerprint at token {c['pos']}"
        theirs = dict(zip(m["idx"], (float(v) for v in m["val"]), strict=True))
        scale = max(max(abs(v) for v in val), 1e-6)
        missing = [i for i in idx if i not in theirs]
        errors = [abs(v - theirs[i]) / scale for i, v in zip(idx, val, strict=True) if i in theirs]
        top = max(errors, default=0.0)
        mean = sum(errors) / len(errors) if errors else 1.0
        worst["max_error"] = max(worst["max_error"], top)
        worst["mean_error"] = max(worst["mean_error"], mean)
        worst["missing"] = max(worst["missing"], len(missing))
        within = top <= tol.max_error and mean <= tol.mean_error  # False for NaN
        if len(missing) > tol.missing or not within:
            return (
                f"hidden states differ at token {c['pos']} (largest error {top:.3g}, "
                f"mean {mean:.3g}, {len(missing)} of {k} entries missing)"
            )
    return ""
