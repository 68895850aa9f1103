"""PSNR and largest difference of two images, read by Blender (run in a subprocess)."""

import json
import math
import sys

import bpy
import numpy as np


def pixels(path: str) -> "np.ndarray":
    image = bpy.data.images.load(path)
    if path.endswith(".png"):
        image.colorspace_settings.is_data = True
    data = np.empty(image.size[0] * image.size[1] * 4, dtype=np.float32)
    image.pixels.foreach_get(data)
    return data.reshape(image.size[1], image.size[0], 4)


a, b = pixels(sys.argv[1]), pixels(sys.argv[2])
if a.shape != b.shape:
    print(json.dumps({"shape": [list(a.shape), list(b.shape)]}))
else:
    mse = float(np.mean((a - b) ** 2))
    psnr = math.inf if mse == 0 else 10 * math.log10(1.0 / mse)
    print(json.dumps({"max": float(np.abs(a - b).max()), "psnr": psnr}))
