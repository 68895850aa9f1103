"""Comparators: honest float noise must agree, wrong or lazy outputs must not."""

import numpy as np
import pytest
from safetensors.numpy import save

from sparegrid.coordinator.domain import FileRef
from sparegrid.coordinator.services.comparators import (
    ExactComparator,
    ImageComparator,
    TensorComparator,
)
from sparegrid.coordinator.services.images import decode_png, psnr
from sparegrid.wire import sha256_hex
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


@pytest.mark.parametrize("precision", ["fp32", "tf32", "fp16", "bf16"])
def test_no_false_rejections_of_honest_tensors(precision: str) -> None:
    rng = np.random.default_rng(1)
    comparator = TensorComparator()
    rejected = 0
    for _ in range(200):
        exact, other = honest_pair(rng, precision)
        (a, b), store = blobs(save({"y": exact}), save({"y": other}))
        if not comparator.agree({"precision": precision}, a, b, store.__getitem__):
            rejected += 1
    assert rejected == 0


@pytest.mark.parametrize("precision", ["fp32", "tf32", "fp16", "bf16"])
def test_wrong_and_lazy_tensors_are_rejected(precision: str) -> None:
    rng = np.random.default_rng(2)
    comparator = TensorComparator()
    exact, _ = honest_pair(rng, precision)
    wrong = exact.copy()
    wrong[3, 4] += 0.5 * float(np.abs(exact).max())
    for bad in [np.zeros_like(exact), wrong, exact[:, :16].copy(), exact.astype(np.float64)]:
        (a, b), store = blobs(save({"y": exact}), save({"y": bad}))
        assert not comparator.agree({"precision": precision}, a, b, store.__getitem__)
    (a, b), store = blobs(save({"y": exact}), save({"z": exact}))
    assert not comparator.agree({"precision": precision}, a, b, store.__getitem__)


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
    assert not comparator.agree({}, a, c, store.__getitem__)


def test_exact_comparator_wants_every_digest_and_name() -> None:
    (a, b), _ = blobs(b"1", b"2")
    comparator = ExactComparator()
    assert comparator.agree({}, a, list(a), dict().__getitem__)
    assert not comparator.agree({}, a, b, dict().__getitem__)
    assert not comparator.agree({}, a, [*a, FileRef("extra", "d", 1)], dict().__getitem__)


@pytest.mark.parametrize("shape", [(12, 9), (40, 3), (3, 40), (1, 1)])
@pytest.mark.parametrize("band_cells", [None, 200])
def test_png_decoder_reads_every_filter(
    shape: tuple[int, int], band_cells: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sparegrid.coordinator.services import images

    if band_cells is not None:  # a few rows per band: every band starts below the last
        monkeypatch.setattr(images, "_SKEW_CELLS", band_cells)
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    decoded = decode_png(png(image))
    assert np.array_equal(np.round(decoded * 255).astype(np.uint8), image)
    window = decode_png(png(image), rows=2, columns=1)  # only the top-left corner
    assert np.array_equal(np.round(window * 255).astype(np.uint8), image[:2, :1])


def test_png_decoder_reads_16_bit_frames() -> None:
    import struct
    import zlib

    image = np.random.default_rng(1).integers(0, 65536, (5, 7, 3)).astype(">u2")
    raw = b"".join(b"\0" + image[y].tobytes() for y in range(5))
    header = struct.pack(">IIBBBBB", 7, 5, 16, 2, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n"
    for kind, body in ((b"IHDR", header), (b"IDAT", zlib.compress(raw)), (b"IEND", b"")):
        data += struct.pack(">I", len(body)) + kind + body + b"\0" * 4
    assert np.array_equal(np.round(decode_png(data) * 65535), image.astype(np.float64))
    window = decode_png(data, rows=2, columns=3)
    assert np.array_equal(np.round(window * 65535), image[:2, :3].astype(np.float64))


def test_frames_of_the_wrong_size_are_never_decoded() -> None:
    """A node's PNG that claims another size than the task's frame (a decompression bomb,
    say) disagrees from its header alone."""
    import struct
    import zlib

    frame = np.zeros((36, 48, 3), dtype=np.uint8)
    header = struct.pack(">IIBBBBB", 1, 1 << 27, 8, 2, 0, 0, 0)  # 1 x 134M pixels
    body = zlib.compress(b"\0" * 4 * (1 << 20))  # the start of a stream that goes on
    bomb = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + header + b"\0" * 4
    bomb += struct.pack(">I", len(body)) + b"IDAT" + body + b"\0" * 4
    (a, b), store = blobs(png(frame), bomb)
    params = {"resolution": [48, 36], "frames": [1], "format": "png"}
    assert not ImageComparator().agree(params, a, b, store.__getitem__)
    crop = {"resolution": [48, 36], "frames": [1], "tile": [0, 16, 0, 16], "format": "png"}
    whole = [FileRef("frame_0001.png", a[0].digest, a[0].size)]
    part = [FileRef("tile_x00000-00016_y00000-00016.png", b[0].digest, b[0].size)]
    assert not ImageComparator().agree_crop(params, whole, crop, part, store.__getitem__)


def test_frames_agree_above_the_psnr_threshold_only() -> None:
    rng = np.random.default_rng(4)
    frame = rng.integers(40, 200, (24, 32, 3)).astype(np.int32)
    noisy = np.clip(frame + rng.integers(-2, 3, frame.shape), 0, 255)  # sampling noise
    black = np.zeros_like(frame)
    comparator = ImageComparator()
    (a, b, c), store = blobs(png(frame), png(noisy), png(black))
    assert psnr(decode_png(png(frame)), decode_png(png(noisy))) > 40
    assert comparator.agree({}, a, b, store.__getitem__)
    assert not comparator.agree({}, a, c, store.__getitem__)
    (d,), more = blobs(b"EXR bytes, not a PNG")
    store.update(more)
    assert not comparator.agree({}, a, d, store.__getitem__)


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
    lazy = result(tensors[2], metas[1])
    assert not comparator.agree(params, honest_a, lazy, store.__getitem__)
    assert not comparator.agree(params, honest_a, result(tensors[1], None), store.__getitem__)
