"""Evaluation's per-image scores and their aggregation: paired fidelity, Dice as nnU-Net and the Medical
Segmentation Decathlon report it, and an honest summary.

Per-image values come first (shape ``(N,)``); aggregate afterwards with :func:`summarize`. PSNR and SSIM
and MS-SSIM are the ones of :mod:`maskray.measures.image` (images in ``[-1, 1]``), Dice
:mod:`maskray.measures.mask_check`'s: the measures live there, their aggregation for a report here.
"""

from __future__ import annotations

import math

import torch

from maskray.measures.image import ms_ssim, psnr, ssim
from maskray.measures.mask_check import dice

# An exact copy has an infinite PSNR. 60 dB is an RMS error of 0.1% of the range, far below one 8-bit level
# (48.1 dB): such a pair is a copy. Capped values stay in the mean and are counted (``n_capped``).
PSNR_CAP_DB = 60.0


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
