"""Whether two renders of the same pixels agree: the metrics, and the rules that decide.

Honest renders of a frame on the CPU are bit-exact, whatever the thread count, and a crop
rendered alone matches the frame's pixels exactly, as long as both skip the denoiser and
dither. What may differ between honest nodes:

- float rounding on other hardware: rays that take another path now and then (a few
  pixels far off, most not at all);
- dither: a spot check's crop is rendered without it (Blender's dither noise depends on
  the image size, so a crop's could never match), and a dithered frame is then up to one
  8-bit level per unit of dither off in every channel;
- the denoiser, for a crop of a denoised frame: rendered with a margin so that it sees
  about what it saw in the frame, but not all of it (Open Image Denoise scales its input
  by the whole image's exposure).

A cheap render (fewer samples, a lower resolution upscaled, denoised from fewer samples,
blurred, another frame, another seed) differs in most pixels of any part of the frame
with detail in it. So the rules look at the error beyond the dither allowance, with the
worst few pixels set aside (`TRIM`: a path or two that went elsewhere must not decide),
over the whole image and in its worst 16 x 16 block, and at the share of values more than
four levels off; a whole frame also at how well the two frames' pixel noise correlates
(the same seed gives the same noise pattern; nothing cheap does). The thresholds come
from bench/frames.py (bench/results/frames-*.txt), with a margin on both sides.
"""

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

Image = npt.NDArray[np.floating[Any]]  # (height, width, channels), values in [0, 1]
LEVEL = 1 / 255  # one step of an 8-bit channel
BLOCK = 16  # pixels on a side of the blocks the worst-block PSNR looks at
TRIM = 0.002  # share of pixels (at least 2) whose errors are set aside as float accidents
OFF = 4  # levels beyond the allowance that count a value as off
MAX_DITHER = 2.0  # Blender's largest dither intensity
FRAME, CROP, CROP_DENOISED = "frame", "crop", "crop of a denoised frame"
_EPSILON = 1e-7  # float noise of decoding, far under a 16-bit level (1.5e-5)


@dataclass(frozen=True)
class Rule:
    """Least PSNR and worst-block PSNR (dB, of the trimmed error beyond the allowance),
    most share of values more than OFF levels beyond it, least noise correlation."""

    name: str
    min_psnr: float
    min_block_psnr: float
    max_off: float
    min_noise_correlation: float | None = None

    def describe(self) -> str:
        text = (
            f"{self.name}: PSNR >= {self.min_psnr:g} dB, worst {BLOCK}x{BLOCK} block >= "
            f"{self.min_block_psnr:g} dB, values > {OFF} levels off <= {self.max_off:.2%}"
        )
        if self.min_noise_correlation is not None:
            text += f", noise correlation >= {self.min_noise_correlation:g}"
        return text


# From bench/results/frames-*.txt (honest: the worst of the honest pairs; cheap: how the
# cheap pair closest to passing is caught). Crops of flat regions, where a cheap frame
# equals the honest one within the allowance, cannot be caught by any rule.
RULES: dict[str, Rule] = {
    # honest (camera moved 1e-4): PSNR >= 67.3, block >= 58.7, nothing off, correlation
    # >= 0.9996; cheap: 1/2 of the samples of Blender's default cube, denoised, has a
    # correlation of 0.9916, 4x further from 1 than the threshold
    FRAME: Rule(FRAME, 60.0, 50.0, 0.001, 0.998),
    # honest (camera moved 1e-4): PSNR >= 57.1, block >= 52.7, off <= 0.08%
    CROP: Rule(CROP, 52.0, 46.0, 0.002),
    # honest: PSNR >= 47.5, block >= 42.4, off <= 0.48% (the denoiser's context differs)
    CROP_DENOISED: Rule(CROP_DENOISED, 44.0, 39.0, 0.01),
}


@dataclass(frozen=True)
class Verdict:
    agree: bool
    detail: str
    metrics: dict[str, Any]


def check(a: Image, b: Image, rule: Rule, allowance: float = 0.0) -> Verdict:
    """Two images of the same pixels under `rule`, with `allowance` 8-bit levels of
    difference forgiven in every value (dither)."""
    if a.shape != b.shape:
        detail = f"shapes differ: {list(a.shape)} against {list(b.shape)}"
        return Verdict(False, detail, {"rule": "shape"})
    m = metrics(a, b, allowance, noise=rule.min_noise_correlation is not None)
    evidence: dict[str, Any] = {"rule": rule.name, "allowance": allowance, **m}
    tests = [
        ("psnr", m["psnr"] >= rule.min_psnr, f"PSNR {m['psnr']:.1f} dB under {rule.min_psnr:g}"),
        (
            "block_psnr",
            m["block_psnr"] >= rule.min_block_psnr,
            f"worst block ({m['block'][0]}, {m['block'][1]}) at {m['block_psnr']:.1f} dB "
            f"under {rule.min_block_psnr:g}",
        ),
        (
            "off",
            m["off"] <= rule.max_off,
            f"{m['off']:.2%} of values more than {OFF} levels off, over {rule.max_off:.2%}",
        ),
    ]
    if rule.min_noise_correlation is not None:
        corr = m["noise_correlation"]
        ok = corr >= rule.min_noise_correlation
        tests.append(
            ("noise", ok, f"noise correlation {corr:.4f} under {rule.min_noise_correlation:g}")
        )
    for name, ok, why in tests:
        if not ok:
            return Verdict(False, f"{why} ({rule.name} rule)", {**evidence, "failed": name})
    detail = f"PSNR {m['psnr']:.1f} dB, worst block {m['block_psnr']:.1f} dB ({rule.name} rule)"
    return Verdict(True, detail, evidence)


def metrics(a: Image, b: Image, allowance: float = 0.0, noise: bool = True) -> dict[str, Any]:
    """What `check` decides on, and the largest difference for the record. PSNRs are inf
    for images equal within the allowance. Computed in float32 (a 4K frame pair is
    tens of millions of values)."""
    diff = np.abs(a.astype(np.float32) - b.astype(np.float32))
    excess = np.maximum(diff - np.float32(allowance * LEVEL + _EPSILON), np.float32(0))
    err = (excess * excess).mean(axis=2, dtype=np.float64)  # per pixel
    kept = _kept(err)
    trimmed = np.where(kept, err, 0.0)
    blocks = block_mse(trimmed)
    worst = np.unravel_index(int(blocks.argmax()), blocks.shape)
    off = excess > np.float32((OFF + 0.5) * LEVEL)
    off &= kept[..., None]
    out: dict[str, Any] = {
        "psnr": _db(float(trimmed.mean())),
        "block_psnr": _db(float(blocks.max())),
        "block": [int(worst[1]) * BLOCK, int(worst[0]) * BLOCK],  # x, y from the top left
        "off": float(off.mean()),
        "untrimmed_psnr": _db(float(err.mean())),
        "max_levels": float(diff.max() / LEVEL),
        "size": [int(a.shape[1]), int(a.shape[0])],
    }
    if noise:
        out["noise_correlation"] = noise_correlation(a, b, kept)
    return out


def _kept(err: npt.NDArray[np.float64]) -> npt.NDArray[np.bool_]:
    """Every pixel but the TRIM share (at least 2) with the largest errors."""
    kept = np.ones(err.shape, dtype=bool)
    count = min(err.size, max(2, int(TRIM * err.size)))
    kept.ravel()[np.argpartition(err.ravel(), -count)[-count:]] = False
    return kept


def _db(mse: float) -> float:
    return math.inf if mse <= 0 else 10.0 * math.log10(1.0 / mse)


def _box(x: Image, k: int) -> Image:
    """Means over every k x k window that fits (a 'valid' box filter), per channel."""
    c = np.zeros((x.shape[0] + 1, x.shape[1] + 1, x.shape[2]))
    c[1:, 1:] = x.cumsum(0).cumsum(1)
    means: Image = (c[k:, k:] - c[:-k, k:] - c[k:, :-k] + c[:-k, :-k]) / (k * k)
    return means


def block_mse(err: npt.NDArray[np.float64], k: int = BLOCK) -> npt.NDArray[np.float64]:
    """Mean of a per-pixel error over k x k blocks from the top left (those at the right
    and bottom edges may be smaller), shaped (block rows, block columns)."""
    h, w = err.shape
    rows, cols = -(-h // k), -(-w // k)
    padded = np.zeros((rows * k, cols * k))
    padded[:h, :w] = err
    count = np.zeros_like(padded)
    count[:h, :w] = 1
    sums = padded.reshape(rows, k, cols, k).sum(axis=(1, 3))
    means: npt.NDArray[np.float64] = sums / count.reshape(rows, k, cols, k).sum(axis=(1, 3))
    return means


def ssim(a: Image, b: Image, k: int = 7) -> float:
    """Mean structural similarity of the images' luminance (mean of colour channels), over
    k x k windows; 1.0 for identical images. Not part of any rule (bench/frames.py
    reports it: it separated honest from cheap frames less well than the rules' tests)."""
    k = min(k, a.shape[0], a.shape[1])
    x, y = a[..., :3].mean(2, keepdims=True), b[..., :3].mean(2, keepdims=True)
    mx, my = _box(x, k), _box(y, k)
    sxx, syy = _box(x * x, k) - mx * mx, _box(y * y, k) - my * my
    sxy = _box(x * y, k) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return float(s.mean())


def noise_correlation(a: Image, b: Image, kept: npt.NDArray[np.bool_] | None = None) -> float:
    """Correlation of the images' high-frequency residuals (each value less the mean of
    its 3 x 3 neighbourhood): near 1 when they share their noise pattern and edges. Pixels
    not `kept`, and their neighbours, are left out."""
    if min(a.shape[0], a.shape[1]) < 3:
        return 1.0
    ra, rb = _residual(a), _residual(b)
    if kept is not None:
        near = np.zeros(ra.shape[:2], dtype=bool)
        for dy in range(3):
            for dx in range(3):
                near |= ~kept[dy : dy + near.shape[0], dx : dx + near.shape[1]]
        ra[near], rb[near] = 0, 0
    den = math.sqrt(float(np.vdot(ra, ra)) * float(np.vdot(rb, rb)))
    return float(np.vdot(ra, rb)) / den if den > 0 else 1.0


def _residual(x: Image) -> npt.NDArray[np.float32]:
    """Each colour value of the inner pixels less the mean of its 3 x 3 neighbourhood."""
    c = x[..., :3].astype(np.float32)
    h, w = c.shape[0] - 2, c.shape[1] - 2
    total = np.zeros((h, w, 3), dtype=np.float32)
    for dy in range(3):
        for dx in range(3):
            total += c[dy : dy + h, dx : dx + w]
    residual: npt.NDArray[np.float32] = c[1:-1, 1:-1] - total / np.float32(9)
    return residual


def describe_rules() -> str:
    return "; ".join(rule.describe() for rule in RULES.values())
