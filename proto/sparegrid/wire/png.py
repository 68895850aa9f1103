"""PNG images decoded (the coordinator compares nodes' frames, the SDK stitches tiles)
and written, never inflated past what their header implies.

8-bit PNGs (what Blender writes by default) are decoded by Pillow: about ten times faster
than numpy can undo PNG filters, and Pillow stops inflating pixel data once the image its
header declares is full, and bounds compressed text and colour-profile chunks. 16-bit
PNGs are decoded here, exactly (Pillow would round them to 8 bits), from a zlib stream
inflated at most to the header's size. Either way a header is checked first: grey, grey
and alpha, RGB or RGBA, of at most MAX_PIXELS. Anything else raises ValueError, and the
caller falls back to digests.
"""

import io
import math
import struct
import warnings
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

SIGNATURE = b"\x89PNG\r\n\x1a\n"
_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}
MAX_PIXELS = 1 << 27  # 134 megapixels: past 16K x 8K; also under Pillow's own bomb limit


@dataclass(frozen=True)
class PngHeader:
    width: int
    height: int
    depth: int
    channels: int
    interlaced: bool


def png_header(data: bytes) -> PngHeader:
    """The header (IHDR, always the first chunk), checked, without decoding anything."""
    if not data.startswith(SIGNATURE) or len(data) < 33 or data[12:16] != b"IHDR":
        raise ValueError("not a PNG file")
    width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", data[16:29])
    if color not in _CHANNELS or depth not in (8, 16):
        raise ValueError(f"unsupported PNG (colour type {color}, depth {depth})")
    if not width or not height or width * height > MAX_PIXELS:
        raise ValueError(f"a {width}x{height} PNG is too large to compare")
    return PngHeader(width, height, depth, _CHANNELS[color], bool(interlace))


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the header, without decoding; ValueError if it is not a PNG."""
    if not data.startswith(SIGNATURE) or data[12:16] != b"IHDR" or len(data) < 24:
        raise ValueError("not a PNG file")
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def decode_png(
    data: bytes, rows: int | None = None, columns: int | None = None
) -> npt.NDArray[np.float32]:
    """The image as floats in [0, 1] (float32 holds 16-bit levels exactly), shaped
    (height, width, channels); with `rows` and
    `columns`, only that many of the top rows and left columns (a 16-bit PNG is then
    inflated only down to those rows)."""
    header = png_header(data)
    height, width = (
        min(header.height, rows or header.height),
        min(header.width, columns or header.width),
    )
    if header.depth == 8:
        return _pillow(data, header)[:height, :width].astype(np.float32) / np.float32(255)
    if header.interlaced:
        raise ValueError("interlaced 16-bit PNGs are not compared")
    pixels = _exact(data, header, height)
    values = pixels[:, : width * header.channels * 2].view(">u2").astype(np.float32)
    values /= np.float32(65535)
    return values.reshape(height, width, header.channels)


def png_levels(data: bytes) -> npt.NDArray[Any]:
    """The stored values, exactly: uint8 or uint16, shaped (height, width, channels)."""
    header = png_header(data)
    if header.depth == 8:
        return _pillow(data, header)
    if header.interlaced:
        raise ValueError("interlaced 16-bit PNGs are not read")
    pixels = _exact(data, header, header.height)
    values = pixels.view(">u2").astype(np.uint16)
    return values.reshape(header.height, header.width, header.channels)


def encode_png(levels: npt.NDArray[Any]) -> bytes:
    """A PNG of uint8 or uint16 levels shaped (height, width, channels), 1 to 4 channels:
    8-bit through Pillow; 16-bit written here (Pillow has no 16-bit colour modes)."""
    height, width, channels = levels.shape
    color = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    if levels.dtype == np.uint8:
        mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[channels]
        out = io.BytesIO()
        Image.fromarray(levels.reshape(height, width, channels).squeeze(), mode).save(out, "PNG")
        return out.getvalue()
    if levels.dtype != np.uint16:
        raise ValueError(f"PNG levels are uint8 or uint16, not {levels.dtype}")
    rows = levels.astype(">u2").reshape(height, width * channels).view(np.uint8)
    raw = np.hstack([np.zeros((height, 1), dtype=np.uint8), rows])  # filter 0 on each row
    header = struct.pack(">IIBBBBB", width, height, 16, color, 0, 0, 0)
    return b"".join(
        [
            SIGNATURE,
            _chunk(b"IHDR", header),
            _chunk(b"IDAT", zlib.compress(raw.tobytes(), 6)),
            _chunk(b"IEND", b""),
        ]
    )


def _chunk(kind: bytes, body: bytes) -> bytes:
    crc = zlib.crc32(kind + body)
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)


def _pillow(data: bytes, header: PngHeader) -> npt.NDArray[np.uint8]:
    mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[header.channels]
    try:
        with warnings.catch_warnings():
            # the size was checked above, against a tighter limit than Pillow's warning
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=["PNG"]) as image:
                if image.mode != mode or image.size != (header.width, header.height):
                    raise ValueError(f"PNG decodes as {image.mode} {image.size}")
                image.load()
                pixels = np.asarray(image)
    except (OSError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ValueError(f"PNG does not decode: {exc}") from None
    return pixels.reshape(header.height, header.width, header.channels)


def _exact(data: bytes, header: PngHeader, rows: int) -> npt.NDArray[np.uint8]:
    """The top `rows` rows of a non-interlaced PNG, unfiltered bytes; inflates no more of
    the pixel data than those rows take."""
    bpp = header.channels * header.depth // 8
    stride = header.width * bpp
    wanted = rows * (stride + 1)
    inflater = zlib.decompressobj()
    raw = bytearray()
    pos = len(SIGNATURE)
    while pos + 8 <= len(data) and len(raw) < wanted:
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        if kind == b"IDAT":
            body = data[pos + 8 : pos + 8 + length]
            try:
                raw += inflater.decompress(body, wanted - len(raw))  # never past `wanted`
            except zlib.error as exc:
                raise ValueError(f"PNG pixel data does not inflate: {exc}") from None
        elif kind == b"IEND":
            break
        pos += 12 + length
    if len(raw) < wanted:
        raise ValueError("PNG pixel data is shorter than its header says")
    filtered = np.frombuffer(bytes(raw), dtype=np.uint8).reshape(rows, stride + 1)
    return _unfilter(filtered, bpp)


def _unfilter(rows: npt.NDArray[np.uint8], bpp: int) -> npt.NDArray[np.uint8]:
    """Undoes the rows' PNG filters, in bands of rows small enough to skew (see _band)."""
    h, w = rows.shape[0], (rows.shape[1] - 1) // bpp
    kinds = rows[:, 0]
    if (kinds > 4).any():
        y = int(np.argmax(kinds > 4))
        raise ValueError(f"PNG row {y} has unknown filter {kinds[y]}")
    out = np.empty((h, w * bpp), dtype=np.uint8)
    prior = np.zeros((w, bpp), dtype=np.int16)
    # the most rows whose skewed copy, (rows + w) x rows x bpp cells, fits _SKEW_CELLS
    step = max(1, (math.isqrt(w * w + 4 * (_SKEW_CELLS // bpp)) - w) // 2)
    for top in range(0, h, step):
        band = _band(rows[top : top + step], prior, bpp)
        out[top : top + step] = band.reshape(band.shape[0], -1)
        prior = band[-1]
    return out


_SKEW_CELLS = 1 << 25  # int16 cells of one band's skewed copy (64 MiB)


def _band(rows: npt.NDArray[np.uint8], prior: npt.NDArray[np.int16], bpp: int) -> Any:
    """Unfilters rows below `prior` (the row above them, unfiltered). A byte depends on the
    one to its left (`bpp` bytes back), above and above-left, so the pixels of one
    anti-diagonal (row + column constant) are done together: one vectorised step per
    diagonal, whatever mix of filters the rows use, on a skewed copy [diagonal, row] in
    which each step reads and writes contiguous memory."""
    h, w = rows.shape[0], prior.shape[0]
    kinds = rows[:, 0]
    ys = np.arange(h)[:, None]
    diagonals = ys + np.arange(w)[None, :]
    raw = np.zeros((h + w - 1, h, bpp), dtype=np.int16)
    raw[diagonals, ys] = rows[:, 1:].reshape(h, w, bpp)
    out = np.zeros((h + w + 1, h + 1, bpp), dtype=np.int16)  # [diagonal + 2, row + 1]
    out[1 : w + 1, 0] = prior  # row -1, pixel x, sits on diagonal x - 1
    kind = [np.broadcast_to((kinds == k)[:, None], (h, bpp)) for k in range(4)]
    for d in range(h + w - 1):
        lo, hi = max(0, d - w + 1), min(h, d + 1)
        left, up, up_left = out[d + 1, lo + 1 : hi + 1], out[d + 1, lo:hi], out[d, lo:hi]
        p = left + up - up_left
        pa, pb, pc = np.abs(p - left), np.abs(p - up), np.abs(p - up_left)
        pred = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, up_left))  # Paeth
        pred = np.where(kind[3][lo:hi], (left + up) >> 1, pred)  # Average
        pred = np.where(kind[2][lo:hi], up, pred)  # Up
        pred = np.where(kind[1][lo:hi], left, pred)  # Sub
        pred = np.where(kind[0][lo:hi], 0, pred)  # None
        out[d + 2, lo + 1 : hi + 1] = (raw[d, lo:hi] + pred) & 0xFF
    return out[2:, 1:][diagonals, ys]
