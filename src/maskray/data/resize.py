"""The one resize for images and the one for label maps, used by training, generation and evaluation.

Images: antialiased bilinear (values stay within the input's range, so no clipping is needed for ``[-1, 1]``
or ``[0, 1]`` data beyond float rounding, which is clamped). Label maps: nearest neighbour with
``nearest-exact`` rounding (pixel centres), never interpolated, dtype kept.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _hw(size: int | tuple[int, int]) -> tuple[int, int]:
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))


def resize_image(x: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """float ``(N, C, H, W)`` -> ``(N, C, *size)``; a no-op at the same size. The output stays within the
    input's ``[min, max]``."""
    hw = _hw(size)
    if tuple(x.shape[-2:]) == hw:
        return x
    lo, hi = x.amin(), x.amax()
    y = F.interpolate(x, size=hw, mode="bilinear", antialias=True, align_corners=False)
    return y.clamp(lo, hi)


def resize_label(lab: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """int ``(N, H, W)`` -> ``(N, *size)`` by nearest neighbour; dtype kept."""
    hw = _hw(size)
    if tuple(lab.shape[-2:]) == hw:
        return lab
    return F.interpolate(lab[:, None].float(), size=hw, mode="nearest-exact")[:, 0].round().to(lab.dtype)
