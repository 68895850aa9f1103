"""Comparators: honest float noise must agree, wrong or lazy outputs must not, and every
comparison says why."""

import json
import struct

import numpy as np
import pytest
from safetensors.numpy import save

from sparegrid.coordinator.domain import FileRef
from sparegrid.coordinator.services import tensorcheck
from sparegrid.coordinator.services.comparators import (
    ExactComparator,
    ImageComparator,
    TensorComparator,
)
from sparegrid.coordinator.services.images import decode_png
from sparegrid.wire import sha256_hex
from sparegrid.wire.tensors import decode
from tests.coordinator.helpers import png


def blobs(*datas: bytes) -> tuple[list[list[FileRef]], dict[str, bytes]]:
    store = {sha256_hex(d): d for d in datas}
    return [[FileRef("out", sha256_hex(d), len(d))] for d in datas], store


def round_mantissa(x: np.ndarray, bits: int) -> np.ndarray:
    """x (float32) rounded to `bits` mantissa bits, as TF32 (10) or bf16 (7) would hold it."""
    raw = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    drop = 23 - bits
    rounded = ((raw + (1 << (drop - 1))) >> drop) << drop
    return rounded.astype(np.uint32).view(np.float32)


def bf16_file(tensors: dict[str, np.ndarray]) -> bytes:
    """safetensors bytes holding float32 arrays as BF16 (their top 16 bits, rounded), as a
    worker running in bf16 writes them; numpy's safetensors cannot."""
    header, data = {}, b""
    for name, x in tensors.items():
        bits = round_mantissa(x, 7).view(np.uint32) >> 16
        raw = bits.astype("<u2").tobytes()
        header[name] = {
            "dtype": "BF16",
            "shape": list(x.shape),
            "data_offsets": [len(data), len(data) + len(raw)],
        }
        data += raw
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


def honest_pair(rng: np.random.Generator, precision: str) -> tuple[np.ndarray, np.ndarray]:
    """Two honest results of one layer: the same input and weights, one computed in
    float64 (the reference) and one at the precision, as another GPU would."""
    x = rng.standard_normal((16, 64)).astype(np.float32)
    w = rng.standard_normal((64, 32)).astype(np.float32) / 8
    exact = (x.astype(np.float64) @ w.astype(np.float64)).astype(np.float32)
    if precision == "fp32":
        other = x @ w
    elif precision == "fp16":
        other = (x.astype(np.float16) @ w.astype(np.float16)).astype(np.float32)
    else:
        bits = {"tf32": 10, "bf16": 7}[precision]
        other = round_mantissa(round_mantissa(x, bits) @ round_mantissa(w, bits), bits)
    return exact, other


def compare(precision: str, x: np.ndarray, y: np.ndarray):  # type: ignore[no-untyped-def]
    (a, b), store = blobs(save({"y": x}), save({"y": y}))
    return TensorComparator().compare({"precision": precision}, a, b, store.__getitem__)


@pytest.mark.parametrize("precision", ["fp32", "tf32", "fp16", "bf16"])
def test_no_false_rejections_of_honest_tensors(precision: str) -> None:
    rng = np.random.default_rng(1)
    rejected = [compare(precision, *honest_pair(rng, precision)) for _ in range(200)]
    assert [c.detail for c in rejected if not c.agree] == []


@pytest.mark.parametrize("precision", ["fp32", "tf32", "fp16", "bf16"])
def test_wrong_and_lazy_tensors_are_rejected(precision: str) -> None:
    rng = np.random.default_rng(2)
    exact, _ = honest_pair(rng, precision)
    wrong = exact.copy()
    wrong[3, 4] += 0.5 * float(np.abs(exact).max())
    for bad in [np.zeros_like(exact), wrong, exact[:, :16].copy(), exact.astype(np.float64)]:
        assert not compare(precision, exact, bad).agree
    (a,), store = blobs(save({"y": exact}))
    (c,), more = blobs(save({"z": exact}))
    assert not TensorComparator().agree({}, a, c, {**store, **more}.__getitem__)


def test_a_shard_zeroed_but_for_its_largest_row_is_rejected() -> None:
    """Rows of very different sizes: the largest dominates the tensor, so against the
    tensor's scale the zeroed rows looked like noise (1% of it, under bf16's 5%)."""
    rng = np.random.default_rng(5)
    honest = rng.standard_normal((8, 32)).astype(np.float32)
    honest[0] *= 100  # one sample's activations dwarf the others'
    lazy = np.zeros_like(honest)
    lazy[0] = honest[0]
    old_rule = np.abs(honest - lazy).max() / np.abs(honest).max()
    assert old_rule < 0.05  # what the whole-tensor rule let through
    found = compare("bf16", honest, lazy)
    assert not found.agree and found.metrics["rule"] == "row rms"
    assert found.metrics["row"] != 0 and found.metrics["rows_over"] == 7


def test_a_flipped_argmax_is_rejected_and_a_tie_within_noise_is_not() -> None:
    logits = np.array([[0.52, 0.48, 0.10, 0.05], [0.90, 0.05, 0.02, 0.01]], dtype=np.float32)
    flipped = logits.copy()
    flipped[0, :2] = [0.48, 0.52]
    found = compare("bf16", logits, flipped)
    assert not found.agree and found.metrics["tensor"] == "y"
    # a genuine near-tie, flipped by noise well under bf16's: still the same answer
    tied = np.array([[0.5001, 0.4999, 0.1, 0.05]], dtype=np.float32)
    assert compare("bf16", tied, tied[:, [1, 0, 2, 3]]).agree


def test_argmax_catches_a_flip_too_small_for_the_row_tolerances() -> None:
    """A wide row (many classes) in which only the top two trade places, by a gap under
    the largest-difference tolerance but more than a tie: argmax alone decides."""
    tol = tensorcheck.TOLERANCES["bf16"]
    row = np.random.default_rng(8).uniform(0, 0.5, (1, 1000)).astype(np.float32)
    gap = 0.8 * tol.max  # swapped, the two close 1.6x the tolerance; each moves 0.8x
    row[0, :2] = [1.0, 1.0 - gap]
    flipped = row.copy()
    flipped[0, :2] = [1.0 - gap, 1.0]
    found = compare("bf16", row, flipped)
    assert not found.agree and found.metrics["rule"] == "argmax"
    assert found.metrics["flips"] == [[0]]
    tie = row.copy()
    tie[0, :2] = [1.0, 1.0 - 0.4 * tol.max]  # swapped, they close 0.8x: a tie
    assert compare("bf16", tie, tie[:, [1, 0, *range(2, 1000)]]).agree


@pytest.mark.parametrize("precision", ["fp32", "tf32", "fp16", "bf16"])
def test_row_tolerances_hold_from_both_sides(precision: str) -> None:
    """An RMS difference 10% under the precision's tolerance agrees, 10% over does not;
    likewise one value off by 10% under and over the largest-difference tolerance."""
    tol = tensorcheck.TOLERANCES[precision]
    rng = np.random.default_rng(6)
    x = rng.standard_normal((4, 4096))
    rms = np.sqrt((x * x).mean(axis=1, keepdims=True))
    signs = rng.choice([-1.0, 1.0], size=x.shape)
    for factor, agree in ((0.9, True), (1.1, False)):
        y = x + signs * rms * tol.rms * factor  # RMS difference exactly factor x tolerance
        found = compare(precision, x, y)
        assert found.agree is agree, found.detail
        assert agree or found.metrics["rule"] == "row rms"
    peak = np.abs(x).max(axis=1)
    for factor, agree in ((0.9, True), (1.1, False)):
        y = x.copy()
        y[2, 7] += peak[2] * tol.max * factor  # one value; the row's RMS barely moves
        found = compare(precision, x, y)
        assert found.agree is agree, found.detail
        assert agree or found.metrics["rule"] == "row max"


def test_bf16_tensors_are_decoded_and_compared_by_value() -> None:
    """Two bf16 results a last bit apart differ in digest but agree in value; before,
    safetensors.numpy could not read BF16 and any bit of difference disagreed."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((8, 16)).astype(np.float32)
    first = bf16_file({"output_0": x})
    second = bytearray(first)
    second[-2] ^= 1  # the lowest mantissa bit of the last value
    decoded = decode(first)["output_0"]
    assert decoded.dtype == "BF16" and decoded.values.dtype == np.float32
    assert np.array_equal(decoded.values, round_mantissa(x, 7))
    (a, b), store = blobs(first, bytes(second))
    found = TensorComparator().compare({"precision": "bf16"}, a, b, store.__getitem__)
    assert found.agree, found.detail
    assert found.metrics["outputs"][0]["worst_max"] > 0  # compared, not equal digests
    # honest bf16 noise (a float32 reference against a bf16 computation) agrees too
    exact, other = honest_pair(rng, "bf16")
    (c, d), more = blobs(bf16_file({"y": exact}), bf16_file({"y": other}))
    assert TensorComparator().agree({"precision": "bf16"}, c, d, more.__getitem__)
    # and a bf16 tensor never agrees with the same values in float32
    (e,), third = blobs(save({"output_0": round_mantissa(x, 7)}))
    assert not TensorComparator().agree({}, a, e, {**store, **third}.__getitem__)


def test_nans_must_sit_in_the_same_places() -> None:
    x = np.array([1.0, np.nan, np.inf], dtype=np.float32)
    y = np.array([1.0, np.nan, np.inf], dtype=np.float32)
    z = np.array([1.0, 2.0, np.inf], dtype=np.float32)
    comparator = TensorComparator()
    (a, b, c), store = blobs(save({"y": x}), save({"y": y}), save({"y": z}))
    assert comparator.agree({}, a, b, store.__getitem__)
    assert not comparator.agree({}, a, c, store.__getitem__)


def test_non_tensor_bytes_agree_only_when_identical() -> None:
    (a, b, c), store = blobs(b"not tensors", b"not tensors", b"other")
    comparator = TensorComparator()
    assert comparator.agree({}, a, b, store.__getitem__)
    found = comparator.compare({}, a, c, store.__getitem__)
    assert not found.agree and found.metrics["rule"] == "undecodable"


def test_exact_comparator_wants_every_digest_and_name() -> None:
    (a, b), _ = blobs(b"1", b"2")
    comparator = ExactComparator()
    assert comparator.agree({}, a, list(a), dict().__getitem__)
    found = comparator.compare({}, a, b, dict().__getitem__)
    assert not found.agree and found.metrics == {"rule": "digest", "outputs": ["out"]}
    assert not comparator.agree({}, a, [*a, FileRef("extra", "d", 1)], dict().__getitem__)


def test_inference_results_agree_on_tensors_whatever_their_meta_says() -> None:
    """The executor's meta.json holds device names and timings, which differ between honest
    nodes; both results must carry one, but only the tensors are compared."""
    rng = np.random.default_rng(3)
    exact, other = honest_pair(rng, "bf16")
    tensors = [save({"output_0": exact}), save({"output_0": other}), save({"output_0": exact * 0})]
    metas = [b'{"device": "NVIDIA H200", "timing": 1}', b'{"device": "cpu", "timing": 2}']
    store = {sha256_hex(d): d for d in [*tensors, *metas]}

    def result(t: bytes, m: bytes | None) -> list[FileRef]:
        refs = [FileRef("outputs.safetensors", sha256_hex(t), len(t))]
        return refs + ([FileRef("meta.json", sha256_hex(m), len(m))] if m else [])

    comparator = TensorComparator()
    params = {"precision": "bf16"}
    honest_a, honest_b = result(tensors[0], metas[0]), result(tensors[1], metas[1])
    assert comparator.agree(params, honest_a, honest_b, store.__getitem__)
    lazy = comparator.compare(params, honest_a, result(tensors[2], metas[1]), store.__getitem__)
    assert not lazy.agree
    assert lazy.metrics["output"] == "outputs.safetensors"
    assert lazy.metrics["tensor"] == "output_0" and lazy.metrics["rule"] == "row rms"
    assert lazy.detail.startswith("outputs.safetensors: output_0 row ")
    assert not comparator.agree(params, honest_a, result(tensors[1], None), store.__getitem__)


@pytest.mark.parametrize("shape", [(12, 9), (40, 3), (3, 40), (1, 1)])
def test_png_decoder_reads_every_filter(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    decoded = decode_png(png(image))
    assert np.array_equal(np.round(decoded * 255).astype(np.uint8), image)
    window = decode_png(png(image), rows=2, columns=1)  # only the top-left corner
    assert np.array_equal(np.round(window * 255).astype(np.uint8), image[:2, :1])


def png16(image: np.ndarray, filters: tuple[int, ...] = (0,)) -> bytes:
    """A 16-bit RGB PNG, rows filtered with None (0) or Sub (1) in turn."""
    import zlib

    height, width, _ = image.shape
    raw = b""
    for y in range(height):
        line = image[y].astype(">u2").tobytes()
        if filters[y % len(filters)] == 1:
            prev = b"\0" * 6 + line[:-6]
            line = bytes((c - p) & 0xFF for c, p in zip(line, prev, strict=True))
        raw += bytes([filters[y % len(filters)]]) + line
    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    out = b"\x89PNG\r\n\x1a\n"
    for kind, body in ((b"IHDR", header), (b"IDAT", zlib.compress(raw)), (b"IEND", b"")):
        out += (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )
    return out


@pytest.mark.parametrize("band_cells", [None, 200])
def test_png_decoder_reads_16_bit_frames_exactly(
    band_cells: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sparegrid.wire import png as images

    if band_cells is not None:  # a few rows per band: every band starts below the last
        monkeypatch.setattr(images, "_SKEW_CELLS", band_cells)
    image = np.random.default_rng(1).integers(0, 65536, (5, 7, 3))
    data = png16(image, filters=(0, 1))
    assert np.array_equal(np.round(decode_png(data) * 65535), image)
    window = decode_png(data, rows=2, columns=3)
    assert np.array_equal(np.round(window * 65535), image[:2, :3])


def test_frames_of_the_wrong_size_are_never_decoded() -> None:
    """A node's PNG that claims another size than the task's frame (a decompression bomb,
    say) disagrees from its header alone."""
    import zlib

    frame = np.zeros((36, 48, 3), dtype=np.uint8)
    header = struct.pack(">IIBBBBB", 1, 1 << 27, 8, 2, 0, 0, 0)  # 1 x 134M pixels
    body = zlib.compress(b"\0" * 4 * (1 << 20))  # the start of a stream that goes on
    bomb = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + header + b"\0" * 4
    bomb += struct.pack(">I", len(body)) + b"IDAT" + body + b"\0" * 4
    (a, b), store = blobs(png(frame), bomb)
    params = {"resolution": [48, 36], "frames": [1], "format": "png"}
    found = ImageComparator().compare(params, a, b, store.__getitem__)
    assert not found.agree and "not a 48x36 frame" in found.detail
    crop = {"resolution": [48, 36], "frames": [1], "tile": [0, 16, 0, 16], "format": "png"}
    whole = [FileRef("frame_0001.png", a[0].digest, a[0].size)]
    part = [FileRef("tile_x00000-00016_y00000-00016.png", b[0].digest, b[0].size)]
    found = ImageComparator().compare_crop(params, whole, crop, part, store.__getitem__)
    assert not found.agree and found.metrics["rule"] == "size"


def test_frame_comparisons_carry_their_evidence() -> None:
    rng = np.random.default_rng(4)
    frame = rng.integers(40, 200, (24, 32, 3))
    noisy = np.clip(frame + rng.integers(-2, 3, frame.shape), 0, 255)  # another seed's noise
    (a, b, c), store = blobs(png(frame), png(frame), png(noisy))
    comparator = ImageComparator()
    same = comparator.compare({}, a, b, store.__getitem__)
    assert same.agree and same.metrics["outputs"] == [{"output": "out", "rule": "equal digests"}]
    found = comparator.compare({}, a, c, store.__getitem__)
    assert not found.agree and found.metrics["output"] == "out"
    assert found.metrics["rule"] == "frame" and found.metrics["failed"] == "psnr"
    assert found.metrics["psnr"] < 50 and found.metrics["size"] == [32, 24]
    assert found.detail.startswith("out: PSNR ")
    (d,), more = blobs(b"EXR bytes, not a PNG")
    store.update(more)
    assert not comparator.agree({}, a, d, store.__getitem__)
