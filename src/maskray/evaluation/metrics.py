"""Image and mask metrics: pure functions over tensors with an explicit data range.

Per-image values come first (shape ``(N,)``); aggregate afterwards with :func:`summarize`.
SSIM follows Wang et al. 2004 with a Gaussian window of 11 and sigma 1.5, on images in ``[0, 1]``;
the computation is MONAI's (``SSIMMetric``, ``MultiScaleSSIMMetric``, ``PSNRMetric``, ``compute_dice``).
"""

from __future__ import annotations

import math

import torch
from monai.metrics import MultiScaleSSIMMetric, PSNRMetric, SSIMMetric, compute_dice

SSIM_DESCRIPTION = "SSIM (Wang et al. 2004): Gaussian window 11, sigma 1.5, K1=0.01, K2=0.03, images on [0, 1]"


def _check(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.shape != y.shape or x.ndim != 4:
        raise ValueError(f"expected two (N, C, H, W) tensors of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Per-image PSNR in dB. ``x``, ``y``: float ``(N, C, H, W)`` on ``[0, data_range]``. Returns ``(N,)``."""
    _check(x, y)
    return PSNRMetric(max_val=data_range, reduction="none")(x.float(), y.float()).view(-1)


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Per-image SSIM (Gaussian window 11, sigma 1.5). ``(N, C, H, W)`` on ``[0, data_range]``. Returns ``(N,)``."""
    _check(x, y)
    m = SSIMMetric(spatial_dims=2, data_range=data_range, kernel_type="gaussian", win_size=11, kernel_sigma=1.5,
                   reduction="none")
    return m(x.float(), y.float()).view(-1)


def ms_ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Per-image multi-scale SSIM (Wang et al. 2003), Gaussian window 11, sigma 1.5. Uses the standard five
    scales where the image allows (side > 160) and otherwise the largest number of scales that fits, with
    the standard weights of those scales renormalised to sum to 1. Returns ``(N,)``."""
    _check(x, y)
    side = min(x.shape[-2:])
    weights = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
    scales = max(s for s in range(1, 6) if s == 1 or side > 10 * 2 ** (s - 1))
    w = tuple(v / sum(weights[:scales]) for v in weights[:scales])
    m = MultiScaleSSIMMetric(spatial_dims=2, data_range=data_range, kernel_type="gaussian", kernel_size=11,
                             kernel_sigma=1.5, weights=w, reduction="none")
    return m(x.float(), y.float()).view(-1)


def dice(pred: torch.Tensor, target: torch.Tensor, values: list[int], ignore_empty: bool = True) -> torch.Tensor:
    """Per-image, per-label Dice of two int label maps ``(N, H, W)``. Returns float ``(N, len(values))``;
    NaN where both are empty and ``ignore_empty`` (MONAI's convention)."""
    if pred.shape != target.shape or pred.ndim != 3:
        raise ValueError(f"expected two (N, H, W) label maps of one shape, got {tuple(pred.shape)}, {tuple(target.shape)}")
    vals = torch.as_tensor(values).view(1, -1, 1, 1)
    p = (pred.unsqueeze(1) == vals).float()
    t = (target.unsqueeze(1) == vals).float()
    return compute_dice(p, t, include_background=True, ignore_empty=ignore_empty)


def summarize(values: torch.Tensor) -> dict[str, float]:
    """Mean, standard deviation and count of the finite entries of a per-image metric."""
    v = values.detach().double().flatten()
    v = v[torch.isfinite(v)]
    n = int(v.numel())
    if n == 0:
        return {"mean": math.nan, "std": math.nan, "n": 0}
    return {"mean": float(v.mean()), "std": float(v.std(unbiased=True)) if n > 1 else 0.0, "n": n}
