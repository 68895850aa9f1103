"""A small PNG decoder (zlib and numpy only) and PSNR, for comparing rendered frames.

Non-interlaced PNGs of 8 or 16 bits per channel, grey, grey+alpha, RGB or RGBA: what
Blender writes. Anything else raises ValueError, and the caller falls back to digests.
"""

import struct
import zlib

import numpy as np
import numpy.typing as npt

SIGNATURE = b"\x89PNG\r\n\x1a\n"
_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}
MAX_PIXELS = 1 << 28


def decode_png(data: bytes) -> npt.NDArray[np.float64]:
    """The image as floats in [0, 1], shaped (height, width, channels)."""
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
    rows = np.frombuffer(raw, dtype=np.uint8).reshape(height, stride + 1)
    pixels = _unfilter(rows, bpp, stride)
    if size == 2:
        values = pixels.reshape(height, -1).view(">u2").astype(np.float64) / 65535.0
    else:
        values = pixels.astype(np.float64) / 255.0
    return values.reshape(height, width, channels)


def _unfilter(rows: npt.NDArray[np.uint8], bpp: int, stride: int) -> npt.NDArray[np.uint8]:
    out = np.zeros((rows.shape[0], stride), dtype=np.uint8)
    prior = np.zeros(stride, dtype=np.int32)
    for y in range(rows.shape[0]):
        kind, line = rows[y, 0], rows[y, 1:].astype(np.int32)
        if kind == 0:
            cur = line
        elif kind == 1:  # Sub: a running sum per channel
            cur = np.empty_like(line)
            for c in range(bpp):
                cur[c::bpp] = np.cumsum(line[c::bpp]) & 0xFF
        elif kind == 2:
            cur = (line + prior) & 0xFF
        elif kind in (3, 4):
            cur = _sequential(line, prior, bpp, int(kind))
        else:
            raise ValueError(f"PNG row {y} has unknown filter {kind}")
        out[y] = cur
        prior = cur
    return out


def _sequential(
    line: npt.NDArray[np.int32], prior: npt.NDArray[np.int32], bpp: int, kind: int
) -> npt.NDArray[np.int32]:
    """Average and Paeth depend on the byte to the left: one pass per byte (slow, but
    only run when two frames differ at all)."""
    cur = line.copy()
    for i in range(len(cur)):
        left = int(cur[i - bpp]) if i >= bpp else 0
        up = int(prior[i])
        if kind == 3:
            pred = (left + up) // 2
        else:
            up_left = int(prior[i - bpp]) if i >= bpp else 0
            p = left + up - up_left
            pa, pb, pc = abs(p - left), abs(p - up), abs(p - up_left)
            pred = left if pa <= pb and pa <= pc else up if pb <= pc else up_left
        cur[i] = (int(cur[i]) + pred) & 0xFF
    return cur


def psnr(a: npt.NDArray[np.float64], b: npt.NDArray[np.float64]) -> float:
    """Peak signal-to-noise ratio in dB of two images in [0, 1]; inf when identical."""
    if a.shape != b.shape:
        return 0.0
    mse = float(np.mean((a - b) ** 2))
    return float("inf") if mse == 0 else 10.0 * float(np.log10(1.0 / mse))
