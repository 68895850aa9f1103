"""Whether two inference outputs agree: per-sample tolerances by precision, and argmax.

Outputs hold samples along their first dimension. Each sample (row) is compared on its
own scale: its largest difference over its largest magnitude (or a small share of the
tensor's, for a row that is nearly zero) must stay within the precision's tolerance. A
whole-tensor scale would let one large row hide the others (a shard zeroed but for its
largest row passed). For a tensor of two or more dimensions, the index of each row's
largest value along the last dimension (a classifier's answer, a token) must be the
same on both sides, unless the two values only swapped a tie within that tolerance:
honest low-precision noise may flip a genuine near-tie, never a clear answer.

Tolerances come from bench/tensors.py (bench/results/tensors-*.txt): honest results of
small models on the CPU, each precision against float32 and against itself on other batch
splits and thread counts, and cheap answers (zeroed rows, a flipped argmax, added noise, a
truncated model, a lower precision than claimed, another shard's output).
"""

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from sparegrid.wire.tensors import Tensor


@dataclass(frozen=True)
class Tolerance:
    """How far apart honest rows may be: the RMS of their difference over the row's RMS
    magnitude, and the largest difference over the row's largest magnitude. The second
    also bounds a tie: argmax may change places between two values only if, together,
    they moved toward each other by no more than it (honest noise moves one value by
    under half of it, bench/tensors.py); swapping two values a gap g apart moves them
    2g, so a swap is caught from half the tolerance."""

    rms: float
    max: float


# bench/results/tensors-*.txt (576 honest shards, CPU): the largest honest RMS / largest
# row errors sit 23x / 149x under fp32's, 1.6x / 4.0x under tf32's, 1.8x / 3.4x under
# fp16's, 1.7x / 2.1x under bf16's (a 12-block encoder's: deeper models drift further).
# A lower precision than claimed sits 13x (tf32 for fp32), 2.1x (bf16 for tf32) and 7x
# (8-bit floats for fp16) over the RMS tolerance; 8-bit floats for bf16 on a shallow
# model came as close as 0.9x, and 8 of 72 such shards passed.
TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(1e-5, 1e-4),
    "tf32": Tolerance(1.5e-3, 5e-3),
    "fp16": Tolerance(2.5e-3, 1e-2),
    "bf16": Tolerance(2e-2, 6e-2),
}
DEFAULT_PRECISION = "fp32"
FLOOR = 1e-2  # a row's scale is at least this share of the tensor's largest row scale


@dataclass(frozen=True)
class TensorVerdict:
    agree: bool
    detail: str
    metrics: dict[str, Any]


def row_errors(
    a: npt.NDArray[Any], b: npt.NDArray[Any]
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Each row's (first-axis slice's) largest difference over its largest magnitude, and
    RMS difference over its RMS magnitude; a row's scale is at least FLOOR of the largest
    row's. The arrays are finite, of one shape."""
    rows = a.shape[0] if a.ndim else 1
    x = a.astype(np.float64).reshape(rows, -1)
    y = b.astype(np.float64).reshape(rows, -1)
    if x.shape[1] == 0 or rows == 0:
        return np.zeros(rows), np.zeros(rows)
    d = np.abs(x - y)
    peak = np.maximum(np.abs(x).max(axis=1), np.abs(y).max(axis=1))
    rms = np.maximum(np.sqrt((x * x).mean(axis=1)), np.sqrt((y * y).mean(axis=1)))
    return (
        _ratio(d.max(axis=1), np.maximum(peak, FLOOR * peak.max())),
        _ratio(np.sqrt((d * d).mean(axis=1)), np.maximum(rms, FLOOR * rms.max())),
    )


def _ratio(num: npt.NDArray[np.float64], den: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(num == 0, 0.0, num / den)
    return np.where(np.isnan(out), np.inf, out)


def argmax_flips(a: npt.NDArray[Any], b: npt.NDArray[Any], tie: float) -> list[list[int]]:
    """Positions (all indices but the last) whose argmax along the last dimension differs
    although the two values did not merely swap a tie: they moved toward each other by
    more than `tie` of the row's scale, in total over both sides."""
    if a.ndim < 2 or a.shape[-1] < 2 or a.size == 0:
        return []
    x, y = a.astype(np.float64), b.astype(np.float64)
    ka, kb = x.argmax(axis=-1), y.argmax(axis=-1)
    moved = np.argwhere(ka != kb)
    if not len(moved):
        return []
    rows = x.shape[0]
    peak = np.maximum(
        np.abs(x.reshape(rows, -1)).max(axis=1), np.abs(y.reshape(rows, -1)).max(axis=1)
    )
    scale = np.maximum(peak, FLOOR * float(peak.max()))
    flips = []
    for pos in map(tuple, moved):
        i, j = ka[pos], kb[pos]
        closing = (x[(*pos, i)] - x[(*pos, j)]) + (y[(*pos, j)] - y[(*pos, i)])
        if closing > tie * scale[pos[0]]:
            flips.append([int(p) for p in pos])
    return flips


def compare(
    left: dict[str, Tensor],
    right: dict[str, Tensor],
    precision: str,
    tol: Tolerance | None = None,
) -> TensorVerdict:
    """Two outputs of one shard, tensor by tensor; `tol` defaults to the precision's."""
    tol = tol or TOLERANCES.get(precision, TOLERANCES[DEFAULT_PRECISION])
    metrics: dict[str, Any] = {
        "precision": precision,
        "tolerance": {"rms": tol.rms, "max": tol.max},
    }
    if left.keys() != right.keys():
        names = sorted(left.keys() ^ right.keys())
        return TensorVerdict(False, f"tensor names differ: {names}", {**metrics, "rule": "names"})
    worst = {"rms": 0.0, "max": 0.0}
    for name in sorted(left):
        x, y = left[name], right[name]
        where = {"tensor": name, "dtype": x.dtype, "shape": list(x.values.shape)}
        if x.values.shape != y.values.shape or x.dtype != y.dtype:
            detail = f"{x.dtype}{list(x.values.shape)} against {y.dtype}{list(y.values.shape)}"
            return TensorVerdict(False, f"{name}: {detail}", {**metrics, **where, "rule": "shape"})
        a, b = x.values, y.values
        if not np.issubdtype(a.dtype, np.floating):
            if not np.array_equal(a, b):
                detail = f"{name}: integers differ"
                return TensorVerdict(False, detail, {**metrics, **where, "rule": "exact"})
            continue
        odd = _odd_values(a, b)
        if odd:
            detail = f"{name}: {odd}"
            return TensorVerdict(False, detail, {**metrics, **where, "rule": "nonfinite"})
        finite = np.isfinite(a)
        a, b = np.where(finite, a, 0), np.where(finite, b, 0)
        found = _rows(name, a, b, precision, tol, worst)
        if found is not None:
            return TensorVerdict(False, found[0], {**metrics, **where, **found[1]})
    metrics.update({"rule": "rows", "worst_rms": worst["rms"], "worst_max": worst["max"]})
    detail = (
        f"every row within the {precision} tolerance (worst RMS {worst['rms']:.3g} of "
        f"{tol.rms:g}, largest {worst['max']:.3g} of {tol.max:g})"
    )
    return TensorVerdict(True, detail, metrics)


def _rows(
    name: str,
    a: npt.NDArray[Any],
    b: npt.NDArray[Any],
    precision: str,
    tol: Tolerance,
    worst: dict[str, float],
) -> tuple[str, dict[str, Any]] | None:
    """Why the rows of one tensor disagree, or None; updates `worst`."""
    peak, rms = row_errors(a, b)
    if not peak.size:
        return None
    for stat, errors, limit in (("rms", rms, tol.rms), ("max", peak, tol.max)):
        row = int(errors.argmax())
        err = float(errors[row])
        worst[stat] = max(worst[stat], err)
        if err > limit:
            what = "RMS difference" if stat == "rms" else "largest difference"
            detail = (
                f"{name} row {row}: {what} {err:.3g} of the row's, over the {precision} "
                f"tolerance {limit:g}"
            )
            stats = {
                "rule": f"row {stat}",
                "row": row,
                "error": err,
                "rows_over": _over(errors, limit),
            }
            return detail, stats
    flips = argmax_flips(a, b, tol.max)
    if flips:
        detail = f"{name}: argmax differs beyond a tie at {flips[:5]}"
        return detail, {"rule": "argmax", "flips": flips[:20], "flip_count": len(flips)}
    return None


def stats(left: dict[str, Tensor], right: dict[str, Tensor]) -> dict[str, float]:
    """The worst row errors over every float tensor of two outputs of one shape (for
    calibration: compare() stops at the first tensor that disagrees)."""
    worst = {"rms": 0.0, "max": 0.0}
    for name, x in left.items():
        a, b = x.values, right[name].values
        if not np.issubdtype(a.dtype, np.floating) or a.shape != b.shape:
            continue
        finite = np.isfinite(a) & np.isfinite(b)
        peak, rms = row_errors(np.where(finite, a, 0), np.where(finite, b, 0))
        if peak.size:
            worst["max"] = max(worst["max"], float(peak.max()))
            worst["rms"] = max(worst["rms"], float(rms.max()))
    return worst


def _over(errors: npt.NDArray[np.float64], tol: float) -> int:
    return int((errors > tol).sum())


def _odd_values(a: npt.NDArray[Any], b: npt.NDArray[Any]) -> str:
    """What is wrong with the two arrays' NaNs and infinities, or "": they must sit in the
    same places with the same values."""
    finite_a, finite_b = np.isfinite(a), np.isfinite(b)
    if not np.array_equal(finite_a, finite_b):
        return "NaN or infinity in different places"
    odd = ~finite_a
    if odd.any() and not np.array_equal(np.nan_to_num(a[odd]), np.nan_to_num(b[odd])):
        return "different infinities"
    return ""
