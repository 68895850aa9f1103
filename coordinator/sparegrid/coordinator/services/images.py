"""PNG frames decoded for comparison: the decoder is shared with the SDK, which stitches
tiles with it (sparegrid.wire.png)."""

from sparegrid.wire.png import MAX_PIXELS, PngHeader, decode_png, png_header, png_size

__all__ = ["MAX_PIXELS", "PngHeader", "decode_png", "png_header", "png_size"]
