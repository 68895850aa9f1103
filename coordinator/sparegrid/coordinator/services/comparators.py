"""Whether two results of one task agree, by job kind.

Deterministic executors must agree bit for bit: equal output digests. Tensors from
inference agree within a tolerance set by the task's precision, and rendered PNG frames
above a PSNR threshold: honest nodes on different hardware differ by float noise, and
must never be rejected for it. Equal digests always agree, without reading any bytes.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import numpy as np
import numpy.typing as npt

from sparegrid.coordinator.domain import FileRef
from sparegrid.coordinator.services.images import decode_png, png_size, psnr
from sparegrid.wire.render import output_name

Reader = Callable[[str], bytes]  # output digest -> its bytes
T = TypeVar("T")

# Largest difference allowed, relative to the tensor's largest magnitude, by precision.
# Measured on an H200 against fp32 on the CPU (docs/facts.md): fp32 9.7e-7, TF32 4.6e-4,
# bf16 9.8e-3; each bound leaves about ten times that (fp16 sits between TF32 and bf16).
TOLERANCES: dict[str, float] = {"fp32": 1e-5, "tf32": 5e-3, "fp16": 2e-2, "bf16": 5e-2}
DEFAULT_PRECISION = "fp32"
DEFAULT_MIN_PSNR = 30.0


class Comparator(Protocol):
    def agree(
        self, params: dict[str, Any], a: list[FileRef], b: list[FileRef], read: Reader
    ) -> bool:
        """Whether two results (their outputs, by name) of one task with these params agree."""
        ...


def _pairs(a: list[FileRef], b: list[FileRef]) -> list[tuple[FileRef, FileRef]] | None:
    """Outputs matched by name; None when the names differ."""
    left, right = {r.name: r for r in a}, {r.name: r for r in b}
    if left.keys() != right.keys() or len(left) != len(a) or len(right) != len(b):
        return None
    return [(left[name], right[name]) for name in sorted(left)]


def _decoded_pairs_agree(
    a: list[FileRef],
    b: list[FileRef],
    read: Reader,
    decode: Callable[[bytes], T],
    same: Callable[[T, T], bool],
    skip: frozenset[str] = frozenset(),
) -> bool:
    """Outputs matched by name agree: equal digests, or both decode and are `same`. An
    output that does not decode (not this comparator's format) agrees only bit for bit."""
    pairs = _pairs(a, b)
    if pairs is None:
        return False
    for x, y in pairs:
        if x.digest == y.digest or x.name in skip:
            continue
        try:
            left, right = decode(read(x.digest)), decode(read(y.digest))
        except Exception:
            return False
        if not same(left, right):
            return False
    return True


class ExactComparator:
    """Bit-exact: every output has the same digest."""

    def agree(
        self, params: dict[str, Any], a: list[FileRef], b: list[FileRef], read: Reader
    ) -> bool:
        pairs = _pairs(a, b)
        return pairs is not None and all(x.digest == y.digest for x, y in pairs)


class TensorComparator:
    """safetensors outputs, tensor by tensor, within the tolerance of the precision.

    Outputs named in `informational` (the inference executor's meta.json: device, timings)
    must be there on both sides but are not compared: they differ between honest nodes,
    and what in them matters (NaN/Inf counts) follows from the tensors."""

    def __init__(
        self,
        tolerances: dict[str, float] | None = None,
        informational: frozenset[str] = frozenset({"meta.json"}),
    ) -> None:
        self.tolerances = dict(tolerances or TOLERANCES)
        self.informational = informational

    def tolerance(self, params: dict[str, Any]) -> float:
        precision = params.get("precision", DEFAULT_PRECISION)
        return self.tolerances.get(str(precision), self.tolerances[DEFAULT_PRECISION])

    def agree(
        self, params: dict[str, Any], a: list[FileRef], b: list[FileRef], read: Reader
    ) -> bool:
        tol = self.tolerance(params)
        return _decoded_pairs_agree(
            a, b, read, load_tensors, lambda x, y: tensors_agree(x, y, tol), self.informational
        )


def load_tensors(data: bytes) -> dict[str, npt.NDArray[Any]]:
    from safetensors.numpy import load

    return load(data)


def tensors_agree(
    left: dict[str, npt.NDArray[Any]], right: dict[str, npt.NDArray[Any]], tol: float
) -> bool:
    if left.keys() != right.keys():
        return False
    for name, x in left.items():
        y = right[name]
        if x.shape != y.shape or x.dtype != y.dtype:
            return False
        if not np.issubdtype(x.dtype, np.floating):
            if not np.array_equal(x, y):
                return False
            continue
        if relative_difference(x, y) > tol:
            return False
    return True


def relative_difference(x: npt.NDArray[Any], y: npt.NDArray[Any]) -> float:
    """Largest absolute difference over the largest magnitude of either tensor; inf when
    NaNs or infinities are not in the same places with the same values."""
    a, b = x.astype(np.float64), y.astype(np.float64)
    finite_a, finite_b = np.isfinite(a), np.isfinite(b)
    if not np.array_equal(finite_a, finite_b):
        return math.inf
    odd = ~finite_a
    if odd.any() and not np.array_equal(np.nan_to_num(a[odd]), np.nan_to_num(b[odd])):
        return math.inf
    if not finite_a.any():
        return 0.0
    a, b = a[finite_a], b[finite_a]
    scale = max(float(np.max(np.abs(a))), float(np.max(np.abs(b))))
    diff = float(np.max(np.abs(a - b)))
    if scale == 0.0:
        return 0.0 if diff == 0.0 else math.inf
    return diff / scale


class ImageComparator:
    """PNG frames above a PSNR threshold; any other format (EXR) bit-exact."""

    def __init__(self, min_psnr: float = DEFAULT_MIN_PSNR) -> None:
        self.min_psnr = min_psnr

    def agree(
        self, params: dict[str, Any], a: list[FileRef], b: list[FileRef], read: Reader
    ) -> bool:
        size = _frame_size(params)

        def decode(data: bytes) -> npt.NDArray[np.float64]:
            if size is not None and png_size(data) != size:
                raise ValueError(f"not a {size[0]}x{size[1]} frame")  # never decoded
            return decode_png(data)

        return _decoded_pairs_agree(a, b, read, decode, lambda x, y: psnr(x, y) >= self.min_psnr)

    def agree_crop(
        self,
        params: dict[str, Any],
        whole: list[FileRef],
        crop_params: dict[str, Any],
        crop: list[FileRef],
        read: Reader,
    ) -> bool:
        """Whether a spot check's crop (one frame, one box) matches the same pixels of a
        result of the whole task, which may itself be a tile of the frame."""
        fmt, (frame,), box = params.get("format", "png"), crop_params["frames"], crop_params["tile"]
        width, height = params["resolution"]
        tile = params.get("tile")
        rx0, rx1, ry0, ry1 = tile or (0, width, 0, height)
        x0, x1, y0, y1 = box
        full = {r.name: r for r in whole}.get(output_name(frame, tile and tuple(tile), fmt))
        part = {r.name: r for r in crop}.get(output_name(frame, tuple(box), fmt))
        inside = rx0 <= x0 < x1 <= rx1 and ry0 <= y0 < y1 <= ry1
        if full is None or part is None or len(crop) != 1 or not inside:
            return False
        try:
            whole_png, crop_png = read(full.digest), read(part.digest)
            sizes = png_size(whole_png), png_size(crop_png)
            if sizes != ((rx1 - rx0, ry1 - ry0), (x1 - x0, y1 - y0)):
                return False  # never decoded: the wrong size, or a decompression bomb
            # only the top-left window that holds the crop is decoded (PNG rows run top down)
            image = decode_png(whole_png, rows=ry1 - y0, columns=x1 - rx0)
            piece = decode_png(crop_png)
        except Exception:
            return False
        window = image[ry1 - y1 : ry1 - y0, x0 - rx0 : x1 - rx0]
        return psnr(window, piece) >= self.min_psnr


def _frame_size(params: dict[str, Any]) -> tuple[int, int] | None:
    """(width, height) of a render task's image: its tile, or the frame; None if unknown."""
    if "resolution" not in params:
        return None
    if params.get("tile"):
        x0, x1, y0, y1 = params["tile"]
        return x1 - x0, y1 - y0
    width, height = params["resolution"]
    return width, height


@dataclass
class Comparators:
    """The comparator of each job kind; kinds not named compare digests."""

    by_kind: dict[str, Comparator] = field(
        default_factory=lambda: {"inference": TensorComparator(), "render": ImageComparator()}
    )
    default: Comparator = field(default_factory=ExactComparator)

    def for_kind(self, kind: str) -> Comparator:
        return self.by_kind.get(kind, self.default)
