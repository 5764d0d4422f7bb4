"""Pictures for the page: grayscale and colour PNGs in memory, the mask in colours, a difference map."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, PngImagePlugin

# Colours by label order (background black); nodules get their own bright colour wherever they sit.
PALETTE = np.array([[0, 0, 0], [70, 130, 220], [235, 190, 60], [90, 200, 120], [200, 100, 200], [120, 220, 220],
                    [230, 120, 80], [160, 160, 160]], np.uint8)
NODULE_RGB = np.array([240, 60, 60], np.uint8)


def png_bytes(arr: np.ndarray, info: PngImagePlugin.PngInfo | None = None) -> bytes:
    """uint8/uint16 ``(H, W)`` or uint8 ``(H, W, 3)`` -> PNG file bytes, with ``info``'s text chunks."""
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def to_uint8(x01: np.ndarray) -> np.ndarray:
    """float ``(H, W)`` in ``[0, 1]`` -> uint8, rounded."""
    return np.round(np.clip(x01, 0.0, 1.0) * 255.0).astype(np.uint8)


def colour_mask(label: np.ndarray, labels: dict[str, int], nodule_value: int) -> np.ndarray:
    """uint8 ``(H, W, 3)``: each label value in its colour (by value order), nodules red."""
    out = np.zeros((*label.shape, 3), np.uint8)
    values = sorted(v for v in labels.values() if v != 0)
    for i, v in enumerate(values):
        out[label == v] = PALETTE[1 + i % (len(PALETTE) - 1)]
    out[label == nodule_value] = NODULE_RGB
    return out


def difference(a01: np.ndarray, b01: np.ndarray) -> np.ndarray:
    """uint8 ``(H, W, 3)``: ``|a - b|`` in the magma colour map, 0 black and a difference of 0.5 or more white."""
    from matplotlib import colormaps

    d = np.clip(np.abs(a01.astype(np.float32) - b01.astype(np.float32)) / 0.5, 0, 1)
    return (colormaps["magma"](d)[..., :3] * 255).round().astype(np.uint8)
