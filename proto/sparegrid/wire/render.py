"""The names of a render task's outputs: the worker writes them, the coordinator finds a
frame among them to compare with a spot check's crop, and the SDK stitches tiles by them.

A box is (x0, x1, y0, y1) in pixels of the full frame, y counted from the bottom as
Blender counts it, the upper bounds exclusive.
"""

Box = tuple[int, int, int, int]


def output_name(frame: int, box: Box | None, fmt: str) -> str:
    """`frame_0007.png` for a whole frame; `tile_x00000-00024_y00000-00018.png` for a box."""
    if box is None:
        return f"frame_{frame:04d}.{fmt}"
    x0, x1, y0, y1 = box
    return f"tile_x{x0:05d}-{x1:05d}_y{y0:05d}-{y1:05d}.{fmt}"


# A spot check's crop of a whole frame comes with this output too: {"denoise": bool,
# "dither": float}, the scene's own settings, which the crop was rendered to match (with
# the denoiser; dither it cannot match, see the worker's blender.configure). They tell
# the coordinator how close an honest crop can come to the frame.
CHECK_SETTINGS = "render-settings.json"
