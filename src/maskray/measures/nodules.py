"""Nodule contrast: how much a labelled nodule stands out from the lung around it.

One measure for every place that asks whether a nodule is there in an image: ``evaluate`` (nodules of generated
images against real ones), the autoencoder's nodule survival (reconstructed against original) and the benchmarks.
A nodule is an 8-connected component of the nodule label; its contrast is the mean intensity inside minus the mean
of a ring around it (lung pixels when a lung label is given, otherwise anything but nodule).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import ndimage

_EIGHT = np.ones((3, 3), dtype=int)


def nodule_contrasts(images: torch.Tensor, labels: torch.Tensor, nodule: int, lung: int | None = None,
                     ring: int | None = 3, min_ring: int = 4) -> list[tuple[int, float]]:
    """``[(image index, contrast)]`` for every nodule of every image.

    ``images``: float ``(N, 1, H, W)``; ``labels``: int ``(N, H, W)``. ``ring``: its width in pixels, or ``None``
    for the nodule's equivalent radius (at least 2 px). Nodules with fewer than ``min_ring`` ring pixels are
    skipped (no surrounding lung to compare with)."""
    out = []
    for i, (x, lab) in enumerate(zip(images[:, 0].double().numpy(), labels.numpy())):
        comps, n = ndimage.label(lab == nodule, structure=_EIGHT)
        for k in range(1, n + 1):
            inside = comps == k
            width = ring if ring is not None else max(2, round(math.sqrt(inside.sum() / math.pi)))
            around = ndimage.binary_dilation(inside, iterations=width) & (lab != nodule)
            if lung is not None:
                around &= lab == lung
            if around.sum() >= min_ring:
                out.append((i, float(x[inside].mean() - x[around].mean())))
    return out
