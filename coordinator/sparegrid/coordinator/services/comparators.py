"""Whether two results of one task agree, by job kind, and the evidence for it.

Deterministic executors must agree bit for bit: equal output digests. Tensors from
inference agree within per-sample tolerances set by the task's precision, with the same
argmax wherever it is not a near-tie (tensorcheck.py); rendered PNG frames and spot
checks' crops by the rules calibrated in framecheck.py. Honest nodes on different
hardware differ by float noise, and must never be rejected for it. Equal digests always
agree, without reading any bytes.

Every comparator answers `compare(...)` with a `Comparison`: whether the results agree,
one line saying what decided, and the metrics behind it (JSON-able), for the log and for
dispute evidence. `agree(...)` is `compare(...).agree`.
"""

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from sparegrid.coordinator.domain import FileRef
from sparegrid.coordinator.services import framecheck, tensorcheck, tokencheck
from sparegrid.coordinator.services.images import decode_png, png_size
from sparegrid.wire.render import CHECK_SETTINGS, output_name
from sparegrid.wire.tensors import Tensor, decode

Reader = Callable[[str], bytes]  # output digest -> its bytes
T = TypeVar("T")

TOLERANCES = tensorcheck.TOLERANCES
DEFAULT_PRECISION = tensorcheck.DEFAULT_PRECISION
MAX_SETTINGS = 4096  # bytes of a spot check's CHECK_SETTINGS read at most


@dataclass(frozen=True)
class Comparison:
    """What comparing two results found. `metrics` holds plain JSON values (floats may be
    inf): the measured values, the rule that decided ("rule"), and what was compared
    (output names, crop boxes, tensor names and rows)."""

    agree: bool
    detail: str
    metrics: dict[str, Any] = field(default_factory=dict)


class Comparator(Protocol):
    def compare(
        self, params: dict[str, Any], a: list[FileRef], b: list[FileRef], read: Reader
    ) -> Comparison:
        """Whether two results (their outputs, by name) of one task with these params
        agree, and why."""
        ...

    def agree(
        self, params: dict[str, Any], a: list[FileRef], b: list[FileRef], read: Reader
    ) -> bool: ...


class _Agrees:
    """`agree` as a thin wrapper of `compare`."""

    def compare(
        self, params: dict[str, Any], a: list[FileRef], b: list[FileRef], read: Reader
    ) -> Comparison:
        raise NotImplementedError

    def agree(
        self, params: dict[str, Any], a: list[FileRef], b: list[FileRef], read: Reader
    ) -> bool:
        return self.compare(params, a, b, read).agree


def _pairs(
    a: list[FileRef], b: list[FileRef]
) -> tuple[list[tuple[FileRef, FileRef]] | None, Comparison | None]:
    """Outputs matched by name, or why they cannot be."""
    left, right = {r.name: r for r in a}, {r.name: r for r in b}
    if left.keys() != right.keys() or len(left) != len(a) or len(right) != len(b):
        names = {"a": sorted(r.name for r in a), "b": sorted(r.name for r in b)}
        return None, Comparison(False, "output names differ", {"rule": "names", **names})
    return [(left[name], right[name]) for name in sorted(left)], None


def _compare_decoded(
    a: list[FileRef],
    b: list[FileRef],
    read: Reader,
    decode: Callable[[bytes], T],
    same: Callable[[T, T], Comparison],
    skip: frozenset[str] = frozenset(),
) -> Comparison:
    """Outputs matched by name agree: equal digests, or both decode and are `same`. An
    output that does not decode (not this comparator's format) agrees only bit for bit.
    The first output that disagrees decides; otherwise every output's evidence is kept."""
    pairs, wrong = _pairs(a, b)
    if pairs is None:
        assert wrong is not None
        return wrong
    outputs: list[dict[str, Any]] = []
    for x, y in pairs:
        if x.digest == y.digest:
            outputs.append({"output": x.name, "rule": "equal digests"})
            continue
        if x.name in skip:
            outputs.append({"output": x.name, "rule": "not compared"})
            continue
        try:
            left, right = decode(read(x.digest)), decode(read(y.digest))
        except Exception as exc:
            detail = f"{x.name}: digests differ and it does not decode ({exc})"
            return Comparison(False, detail, {"output": x.name, "rule": "undecodable"})
        found = same(left, right)
        if not found.agree:
            return Comparison(
                False, f"{x.name}: {found.detail}", {"output": x.name, **found.metrics}
            )
        outputs.append({"output": x.name, **found.metrics})
    equal = sum(o["rule"] == "equal digests" for o in outputs)
    detail = f"{len(pairs)} outputs agree ({equal} with equal digests)"
    return Comparison(True, detail, {"outputs": outputs})


class ExactComparator(_Agrees):
    """Bit-exact: every output has the same digest."""

    def compare(
        self, params: dict[str, Any], a: list[FileRef], b: list[FileRef], read: Reader
    ) -> Comparison:
        pairs, wrong = _pairs(a, b)
        if pairs is None:
            assert wrong is not None
            return wrong
        differ = [x.name for x, y in pairs if x.digest != y.digest]
        if differ:
            return Comparison(
                False, f"{differ[0]}: digests differ", {"rule": "digest", "outputs": differ}
            )
        return Comparison(True, "equal digests", {"rule": "digest"})


class TensorComparator(_Agrees):
    """safetensors outputs, tensor by tensor, row by row, within the precision's tolerance
    (tensorcheck.py); any dtype, bf16 included, decoded with numpy.

    Outputs named in `informational` (the inference executor's meta.json: device, timings)
    must be there on both sides but are not compared: they differ between honest nodes,
    and what in them matters (NaN/Inf counts) follows from the tensors."""

    def __init__(
        self,
        tolerances: dict[str, tensorcheck.Tolerance] | None = None,
        informational: frozenset[str] = frozenset({"meta.json"}),
    ) -> None:
        self.tolerances = dict(tolerances or TOLERANCES)
        self.informational = informational

    def compare(
        self, params: dict[str, Any], a: list[FileRef], b: list[FileRef], read: Reader
    ) -> Comparison:
        precision = str(params.get("precision", DEFAULT_PRECISION))
        if precision not in self.tolerances:
            precision = DEFAULT_PRECISION

        def same(x: dict[str, Tensor], y: dict[str, Tensor]) -> Comparison:
            found = tensorcheck.compare(x, y, precision, self.tolerances[precision])
            return Comparison(found.agree, found.detail, found.metrics)

        return _compare_decoded(a, b, read, decode, same, self.informational)


class ImageComparator(_Agrees):
    """PNG frames by framecheck's rules; any other format (EXR) bit-exact."""

    def __init__(self, rules: dict[str, framecheck.Rule] | None = None) -> None:
        self.rules = dict(rules or framecheck.RULES)

    def compare(
        self, params: dict[str, Any], a: list[FileRef], b: list[FileRef], read: Reader
    ) -> Comparison:
        size = _frame_size(params)

        def load(data: bytes) -> Any:
            if size is not None and png_size(data) != size:
                raise ValueError(f"not a {size[0]}x{size[1]} frame")  # never decoded
            return decode_png(data)

        def same(x: Any, y: Any) -> Comparison:
            found = framecheck.check(x, y, self.rules[framecheck.FRAME])
            return Comparison(found.agree, found.detail, found.metrics)

        return _compare_decoded(a, b, read, load, same)

    def compare_crop(
        self,
        params: dict[str, Any],
        whole: list[FileRef],
        crop_params: dict[str, Any],
        crop: list[FileRef],
        read: Reader,
    ) -> Comparison:
        """Whether a spot check's crop (one frame, one box) matches the same pixels of a
        result of the whole task, which may itself be a tile of the frame. The crop may
        have been rendered with a margin: "tile" is the box rendered, "crop" (when given)
        the box compared."""
        fmt, (frame,) = params.get("format", "png"), crop_params["frames"]
        rendered = crop_params["tile"]
        box = crop_params.get("crop") or rendered
        width, height = params["resolution"]
        tile = params.get("tile")
        rx0, rx1, ry0, ry1 = tile or (0, width, 0, height)
        x0, x1, y0, y1 = box
        cx0, cx1, cy0, cy1 = rendered
        where: dict[str, Any] = {"frame": frame, "box": list(box), "rendered": list(rendered)}
        full = {r.name: r for r in whole}.get(output_name(frame, tile and tuple(tile), fmt))
        name = output_name(frame, tuple(rendered), fmt)
        outputs = {r.name: r for r in crop}
        part = outputs.get(name)
        extra = set(outputs) - {name, CHECK_SETTINGS}
        inside = rx0 <= cx0 <= x0 < x1 <= cx1 <= rx1 and ry0 <= cy0 <= y0 < y1 <= cy1 <= ry1
        if full is None or part is None or extra or not inside:
            detail = "the crop's outputs or box do not fit the task"
            return Comparison(False, detail, {**where, "rule": "names"})
        rule, scene = self._crop_rule(tile, crop_params, outputs.get(CHECK_SETTINGS), read)
        where.update(scene)
        try:
            whole_png, crop_png = read(full.digest), read(part.digest)
            sizes = png_size(whole_png), png_size(crop_png)
            if sizes != ((rx1 - rx0, ry1 - ry0), (cx1 - cx0, cy1 - cy0)):
                detail = f"image sizes {sizes} do not fit the boxes"  # never decoded
                return Comparison(False, detail, {**where, "rule": "size"})
            # only the top-left window that holds the crop is needed (PNG rows run top down)
            image = decode_png(whole_png, rows=ry1 - y0, columns=x1 - rx0)
            piece = decode_png(crop_png)
        except Exception as exc:
            return Comparison(False, f"does not decode ({exc})", {**where, "rule": "undecodable"})
        window = image[ry1 - y1 : ry1 - y0, x0 - rx0 : x1 - rx0]
        inner = piece[cy1 - y1 : cy1 - y0, x0 - cx0 : x1 - cx0]
        found = framecheck.check(window, inner, rule, allowance=scene["allowance"])
        detail = f"crop {list(box)} of frame {frame}: {found.detail}"
        return Comparison(found.agree, detail, {**where, **found.metrics})

    def agree_crop(
        self,
        params: dict[str, Any],
        whole: list[FileRef],
        crop_params: dict[str, Any],
        crop: list[FileRef],
        read: Reader,
    ) -> bool:
        return self.compare_crop(params, whole, crop_params, crop, read).agree

    def _crop_rule(
        self,
        tile: list[int] | None,
        crop_params: dict[str, Any],
        settings: FileRef | None,
        read: Reader,
    ) -> tuple[framecheck.Rule, dict[str, Any]]:
        """The rule for a crop, and the allowance for dither (in 8-bit levels). A tile is
        rendered as its crops are, without denoiser or dither. A crop of a whole frame is
        rendered with the scene's denoiser but no dither, and says what the scene uses;
        without that (a crop from before), the loosest rule."""
        if tile is not None and "crop" not in crop_params:
            return self.rules[framecheck.CROP], {"allowance": 0.0}
        denoise, dither = True, framecheck.MAX_DITHER
        if settings is not None and settings.size <= MAX_SETTINGS:
            try:
                told = json.loads(read(settings.digest))
                denoise = bool(told["denoise"])
                dither = min(framecheck.MAX_DITHER, max(0.0, float(told["dither"])))
            except (ValueError, KeyError, TypeError):
                pass
        rule = self.rules[framecheck.CROP_DENOISED if denoise else framecheck.CROP]
        return rule, {"denoise": denoise, "dither": dither, "allowance": math.ceil(dither)}


class GenerateComparator(_Agrees):
    """Completions of a generate task: the same token ids; a check's prefill confirms a
    result by its fingerprints and argmaxes (tokencheck.py)."""

    def compare(
        self, params: dict[str, Any], a: list[FileRef], b: list[FileRef], read: Reader
    ) -> Comparison:
        left, right = {r.name: r for r in a}, {r.name: r for r in b}
        x, y = left.get(tokencheck.COMPLETIONS), right.get(tokencheck.COMPLETIONS)
        if x is None or y is None or left.keys() != right.keys():
            names = {"a": sorted(left), "b": sorted(right)}
            return Comparison(False, "output names differ", {"rule": "names", **names})
        if x.digest == y.digest:
            return Comparison(True, "same completions (equal digests)", {"rule": "digest"})
        try:
            found = tokencheck.same_tokens(read(x.digest), read(y.digest))
        except Exception as exc:
            return Comparison(False, f"completions do not decode ({exc})", {"rule": "undecodable"})
        return Comparison(found.agree, found.detail, found.metrics)

    def compare_crop(
        self,
        params: dict[str, Any],
        whole: list[FileRef],
        crop_params: dict[str, Any],
        crop: list[FileRef],
        read: Reader,
    ) -> Comparison:
        """Whether a checker's prefill (a check's params and check.json) confirms a whole
        result."""
        outputs, mine = {r.name: r for r in whole}, {r.name: r for r in crop}
        needed = (tokencheck.COMPLETIONS, tokencheck.FINGERPRINTS)
        if any(n not in outputs for n in needed) or set(mine) != {tokencheck.CHECK}:
            return Comparison(False, "the check's outputs do not fit the task", {"rule": "names"})
        try:
            refs = [outputs[n] for n in needed] + [mine[tokencheck.CHECK]]
            if any(r.size > tokencheck.MAX_READ for r in refs):
                raise ValueError("an output is too large to compare")
            result = {n: read(outputs[n].digest) for n in needed}
            found = json.loads(read(mine[tokencheck.CHECK].digest))
            verdict = tokencheck.confirm(params, result, {"params": crop_params, "found": found})
        except Exception as exc:
            return Comparison(False, f"does not decode ({exc})", {"rule": "undecodable"})
        return Comparison(verdict.agree, verdict.detail, verdict.metrics)

    def agree_crop(
        self,
        params: dict[str, Any],
        whole: list[FileRef],
        crop_params: dict[str, Any],
        crop: list[FileRef],
        read: Reader,
    ) -> bool:
        return self.compare_crop(params, whole, crop_params, crop, read).agree


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
        default_factory=lambda: {
            "inference": TensorComparator(),
            "render": ImageComparator(),
            "generate": GenerateComparator(),
        }
    )
    default: Comparator = field(default_factory=ExactComparator)

    def for_kind(self, kind: str) -> Comparator:
        return self.by_kind.get(kind, self.default)
