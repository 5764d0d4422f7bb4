"""Evaluation's per-image scores and their aggregation: paired fidelity, Dice as nnU-Net and the Medical
Segmentation Decathlon report it, and an honest summary.

Per-image values come first (shape ``(N,)``); aggregate afterwards with :func:`summarize`. PSNR and SSIM
are the ones of :mod:`maskray.measures.image` (images in ``[-1, 1]``); MS-SSIM is MONAI's.
"""

from __future__ import annotations

import math

import torch
from monai.metrics import MultiScaleSSIMMetric

from maskray.measures.image import SSIM_DESCRIPTION, psnr, ssim
from maskray.measures.mask_check import dice

__all__ = ["SSIM_DESCRIPTION", "PSNR_CAP_DB", "psnr", "ssim", "ms_ssim", "ms_ssim_scales", "paired_scores", "dice",
           "dice_summary", "summarize"]

# An exact copy has an infinite PSNR. 60 dB is an RMS error of 0.1% of the range, far below one 8-bit level
# (48.1 dB): such a pair is a copy. Capped values stay in the mean and are counted (``n_capped``).
PSNR_CAP_DB = 60.0


def ms_ssim_scales(side: int, kernel_size: int = 11) -> int:
    """The most scales (1 to 5) MS-SSIM can use on images whose shorter side is ``side``: MONAI's own check
    (``side // max(1, scales - 1) ** 2 > kernel_size - 1``, in ``monai.metrics.regression.compute_ms_ssim``)
    and a window that still fits the coarsest scale (``side // 2 ** (scales - 1) >= kernel_size``)."""
    fits = [s for s in range(1, 6) if side // max(1, s - 1) ** 2 > kernel_size - 1
            and side // 2 ** (s - 1) >= kernel_size]
    if not fits:
        raise ValueError(f"MS-SSIM needs images of at least {kernel_size} px a side, got {side}")
    return max(fits)


def ms_ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image multi-scale SSIM (Wang et al. 2003), Gaussian window 11, sigma 1.5, of ``(N, 1, H, W)`` images
    in ``[-1, 1]`` (computed on ``[0, 1]``). Uses the standard five scales where the image allows (side >= 176)
    and otherwise the largest number that fits (:func:`ms_ssim_scales`: 4 from 99 px, 3 from 44 px), with the
    standard weights renormalised. Returns ``(N,)``."""
    if x.shape != y.shape or x.ndim != 4:
        raise ValueError(f"expected two (N, C, H, W) tensors of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    weights = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
    scales = ms_ssim_scales(min(x.shape[-2:]))
    w = tuple(v / sum(weights[:scales]) for v in weights[:scales])
    m = MultiScaleSSIMMetric(spatial_dims=2, data_range=1.0, kernel_type="gaussian", kernel_size=11,
                             kernel_sigma=1.5, weights=w, reduction="none")
    return m((x.float() + 1) / 2, (y.float() + 1) / 2).view(-1)


def paired_scores(x: torch.Tensor, y: torch.Tensor) -> dict[str, dict]:
    """Summarised PSNR (capped at :data:`PSNR_CAP_DB`), SSIM and MS-SSIM of ``(N, 1, H, W)`` images in
    ``[-1, 1]`` (clipped to it first) against their references ``y``."""
    a, b = x.clamp(-1, 1), y.clamp(-1, 1)
    return {"psnr": summarize(psnr(a, b), cap=PSNR_CAP_DB), "ssim": summarize(ssim(a, b)),
            "ms_ssim": summarize(ms_ssim(a, b))}


def dice_summary(pred: torch.Tensor, target: torch.Tensor, labels: dict[str, int]) -> dict[str, dict]:
    """Per label name: the mean Dice over all images (``all``), the mean over images whose truth contains the
    label (``present``), and the number of images with an empty truth but a prediction (``false_positive_images``)."""
    d = dice(pred, target, list(labels.values()))
    out = {}
    for j, (name, v) in enumerate(labels.items()):
        present = (target == v).flatten(1).any(1)
        predicted = (pred == v).flatten(1).any(1)
        out[name] = {"all": summarize(d[:, j]), "present": summarize(d[present, j]),
                     "false_positive_images": int((~present & predicted).sum()), "empty_truth_images": int((~present).sum())}
    return out


def summarize(values: torch.Tensor, cap: float | None = None) -> dict[str, float]:
    """Mean, sample standard deviation and count of a per-image metric, hiding nothing.

    With ``cap``, values above it (``inf`` included) count as ``cap`` and ``n_capped`` says how many were.
    NaN entries (a score undefined for that image) are left out of the mean and counted in ``n_undefined``;
    remaining infinities make the mean infinite rather than vanish."""
    v = values.detach().double().flatten()
    out: dict = {}
    if cap is not None:
        over = v > cap
        out["n_capped"] = int(over.sum())
        v = torch.where(over, torch.full_like(v, cap), v)
    undefined = torch.isnan(v)
    if undefined.any():
        out["n_undefined"] = int(undefined.sum())
    v = v[~undefined]
    n = int(v.numel())
    if n == 0:
        return {"mean": math.nan, "std": math.nan, "n": 0, **out}
    std = float(v.std(unbiased=True)) if n > 1 and torch.isfinite(v).all() else (0.0 if n == 1 else math.nan)
    return {"mean": float(v.mean()), "std": std, "n": n, **out}
