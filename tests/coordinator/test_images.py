"""PNG decoding for frame comparison: exact, and never inflated past what the header
implies (issue 11: a 510 KiB "320x240 frame" made the coordinator allocate a GiB)."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from sparegrid.coordinator.services.images import decode_png, png_header
from tests.coordinator.helpers import png

BOMB = textwrap.dedent(
    """
    import resource, struct, sys, zlib
    import numpy, PIL.Image  # their own memory is not the decoder's
    from sparegrid.coordinator.services.images import decode_png

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    width, height, depth = 320, 240, int(sys.argv[1])
    row = b"\\0" + b"\\x10" * (width * 4 * depth // 8)
    packer, idat = zlib.compressobj(9), b""
    for _ in range(height):
        idat += packer.compress(row)
    zeros = b"\\0" * (1 << 20)
    for _ in range(512):  # 512 MiB more than the header's frame holds
        idat += packer.compress(zeros)
    idat += packer.flush()
    header = struct.pack(">IIBBBBB", width, height, depth, 6, 0, 0, 0)
    data = b"\\x89PNG\\r\\n\\x1a\\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    del idat
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        pixels = decode_png(data)
        result = f"{pixels.shape[1]}x{pixels.shape[0]}"
    except ValueError as exc:
        result = f"refused: {exc}"
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) >> 10
    print(len(data) >> 10, grown, result)
    """
)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("depth", [8, 16])
def test_a_decompression_bomb_never_inflates_past_its_header(depth: int) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", BOMB, str(depth)], capture_output=True, text=True, check=True
    )
    size_kib, grown_mib, result = proc.stdout.split(maxsplit=2)
    assert int(size_kib) < 1024  # a small file...
    assert int(grown_mib) < 64, (grown_mib, result)  # ...that once took over a GiB
    assert result.strip() == "320x240"  # the frame its header promised, nothing more


def test_headers_are_checked_before_anything_is_inflated() -> None:
    image = np.zeros((4, 4, 3), dtype=np.uint8)
    data = png(image)
    assert png_header(data).channels == 3
    with pytest.raises(ValueError, match="too large"):
        huge = data[:16] + (1 << 16).to_bytes(4, "big") * 2 + data[24:]  # 65536 x 65536
        decode_png(huge)
    with pytest.raises(ValueError, match="not a PNG"):
        decode_png(b"GIF89a" + bytes(40))
    with pytest.raises(ValueError, match="colour type 3"):
        decode_png(data[:25] + bytes([3]) + data[26:])  # palette images are not compared


def test_pixel_data_shorter_than_its_header_is_refused() -> None:
    image = np.random.default_rng(1).integers(0, 256, (20, 20, 3), dtype=np.uint8)
    data = png(image)
    cut = data.index(b"IDAT") + 40
    with pytest.raises(ValueError):
        decode_png(data[:cut])
