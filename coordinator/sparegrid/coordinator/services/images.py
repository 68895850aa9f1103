"""A small PNG decoder (zlib and numpy only) and PSNR, for comparing rendered frames.

Non-interlaced PNGs of 8 or 16 bits per channel, grey, grey+alpha, RGB or RGBA: what
Blender writes. Anything else raises ValueError, and the caller falls back to digests.
"""

import math
import struct
import zlib
from typing import Any

import numpy as np
import numpy.typing as npt

SIGNATURE = b"\x89PNG\r\n\x1a\n"
_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}
MAX_PIXELS = 1 << 28


def decode_png(
    data: bytes, rows: int | None = None, columns: int | None = None
) -> npt.NDArray[np.float64]:
    """The image as floats in [0, 1], shaped (height, width, channels); with `rows` and
    `columns`, only that many of the top rows and left columns (a PNG decodes from the top
    left, so a window there costs its own size)."""
    if not data.startswith(SIGNATURE):
        raise ValueError("not a PNG file")
    pos, header, idat = len(SIGNATURE), b"", bytearray()
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat += body
        elif kind == b"IEND":
            break
    if len(header) != 13:
        raise ValueError("PNG has no IHDR chunk")
    width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", header)
    if color not in _CHANNELS or depth not in (8, 16) or interlace:
        raise ValueError(f"unsupported PNG (colour type {color}, depth {depth})")
    if width * height > MAX_PIXELS:
        raise ValueError("PNG is too large to compare")
    channels, size = _CHANNELS[color], depth // 8
    bpp, stride = channels * size, width * channels * size
    raw = zlib.decompress(bytes(idat))
    if len(raw) != height * (stride + 1):
        raise ValueError("PNG pixel data has the wrong length")
    height, width = min(height, rows or height), min(width, columns or width)
    filtered = np.frombuffer(raw, dtype=np.uint8).reshape(-1, stride + 1)
    pixels = _unfilter(filtered[:height, : 1 + width * bpp], bpp)
    if size == 2:
        values = pixels.view(">u2").astype(np.float64) / 65535.0
    else:
        values = pixels.astype(np.float64) / 255.0
    return values.reshape(height, width, channels)


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


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the header, without decoding; ValueError if it is not a PNG."""
    if not data.startswith(SIGNATURE) or data[12:16] != b"IHDR" or len(data) < 24:
        raise ValueError("not a PNG file")
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def psnr(a: npt.NDArray[np.float64], b: npt.NDArray[np.float64]) -> float:
    """Peak signal-to-noise ratio in dB of two images in [0, 1]; inf when identical."""
    if a.shape != b.shape:
        return 0.0
    mse = float(np.mean((a - b) ** 2))
    return float("inf") if mse == 0 else 10.0 * float(np.log10(1.0 / mse))
