"""Intensity adherence: does the region the condition calls lung come out darker than its surroundings?

On a radiograph aerated lung attenuates least, so it is darker than the mediastinum (heart label) and than
the body just outside the lung fields. The check needs no trained segmenter, so it runs on every generated
image, from the first training step on.
"""

from __future__ import annotations

import torch
from scipy import ndimage

from maskray.measures.nodules import nodule_contrasts


def lung_darker(images: torch.Tensor, labels: torch.Tensor, lung: int, mediastinum: int | None = None,
                ring_fraction: float = 1 / 16) -> dict[str, torch.Tensor]:
    """Per image: is mean(lung) below mean(mediastinum) and below mean(body ring)?

    ``images``: float ``(N, 1, H, W)``; ``labels``: int ``(N, H, W)``. The body ring is the band of width
    ``ring_fraction * W`` around the lung fields that no label covers. Returns bool ``(N,)`` tensors
    ``ok``, ``vs_mediastinum`` (all True when there is no mediastinum label) and ``vs_body``, and float
    ``(N,)`` contrasts (region mean minus lung mean, in image units).
    """
    n, _, h, w = images.shape
    r = max(1, round(w * ring_fraction))
    ok_m, ok_b, c_m, c_b = [], [], [], []
    for i in range(n):
        x = images[i, 0].float()
        lab = labels[i].numpy()
        lung_m = lab == lung
        if not lung_m.any():
            ok_m.append(False), ok_b.append(False), c_m.append(float("nan")), c_b.append(float("nan"))
            continue
        lung_mean = x[torch.from_numpy(lung_m)].mean()
        ring = ndimage.binary_dilation(lung_m, iterations=r) & (lab == 0)
        body = x[torch.from_numpy(ring)].mean() if ring.any() else torch.tensor(float("nan"))
        c_b.append(float(body - lung_mean))
        ok_b.append(bool(body > lung_mean))
        if mediastinum is not None and (lab == mediastinum).any():
            med = x[torch.from_numpy(lab == mediastinum)].mean()
            c_m.append(float(med - lung_mean))
            ok_m.append(bool(med > lung_mean))
        else:
            c_m.append(float("nan"))
            ok_m.append(True)
    vm, vb = torch.tensor(ok_m), torch.tensor(ok_b)
    return {"ok": vm & vb, "vs_mediastinum": vm, "vs_body": vb, "contrast_mediastinum": torch.tensor(c_m),
            "contrast_body": torch.tensor(c_b)}


def nodule_contrast(images: torch.Tensor, labels: torch.Tensor, nodule: int, lung: int, ring: int = 3) -> torch.Tensor:
    """Per nodule (measures/nodules.py): mean intensity inside minus the mean of the lung within ``ring`` pixels
    around it; float ``(M,)`` over all images. Near zero when an image ignores the nodules of its mask."""
    return torch.tensor([c for _, c in nodule_contrasts(images, labels, nodule, lung, ring=ring)], dtype=torch.float64)
