"""What an autoencoder keeps of held-out radiographs: fidelity, texture and nodule survival.

- reconstruction PSNR and SSIM (``maskray.measures.image``, images on ``[-1, 1]``);
- texture: the distance between the mean log radial power spectra of real and reconstructed images
  (``spectrum_distance``, in decades of power; a smoothing autoencoder loses high-frequency power);
- **nodule survival**: for each labelled nodule (a connected component of the label named ``nodule``), its
  contrast against the lung ring around it (mean inside minus mean of the lung pixels within a ring as wide
  as the nodule's equivalent radius, at least 2 px), measured on the reconstruction and on the original.
  The ratio reconstructed / original is 1 when the nodule is kept and 0 when it is erased; a nodule
  *survives* when the ratio is at least 0.5. Nodules whose original contrast is below ``min_contrast``
  (invisible in the original) are left out and counted.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from maskray.measures.image import psnr, spectrum_distance, ssim
from maskray.measures.nodules import nodule_contrasts


def nodule_survival(real: torch.Tensor, recon: torch.Tensor, labels: torch.Tensor, nodule: int,
                    lung: int | None = None, min_contrast: float = 0.02) -> dict:
    """Ratio of reconstructed to original nodule contrast, per nodule, summarised.

    ``real``, ``recon``: ``(N, 1, H, W)`` on ``[-1, 1]``; ``labels``: ``(N, H, W)``. Returns ``n_nodules``,
    ``n_scored`` (original contrast magnitude >= ``min_contrast``), ``mean_ratio``, ``median_ratio`` and
    ``fraction_surviving`` (ratio >= 0.5); NaN where no nodule is scored.
    """
    a = nodule_contrasts(real, labels, nodule, lung, ring=None, min_ring=1)
    b = nodule_contrasts(recon, labels, nodule, lung, ring=None, min_ring=1)
    ratios = [cb / ca for (_, ca), (_, cb) in zip(a, b) if abs(ca) >= min_contrast]
    r = np.asarray(ratios, dtype=np.float64)
    nan = float("nan")
    return {"n_nodules": len(a), "n_scored": len(ratios), "min_contrast": min_contrast,
            "mean_ratio": float(r.mean()) if r.size else nan, "median_ratio": float(np.median(r)) if r.size else nan,
            "fraction_surviving": float((r >= 0.5).mean()) if r.size else nan,
            "mean_contrast_original": float(np.mean([c for _, c in a])) if a else nan}


def reconstruction_report(real: torch.Tensor, recon: torch.Tensor, labels: torch.Tensor | None = None,
                          label_values: dict[str, int] | None = None) -> dict:
    """PSNR, SSIM (mean and std over images), spectrum distance and, where nodules are labelled, survival."""
    p, s = psnr(real, recon), ssim(real, recon)
    out = {"n_images": int(real.shape[0]),
           "psnr_db": {"mean": float(p.mean()), "std": float(p.std()) if len(p) > 1 else 0.0},
           "ssim": {"mean": float(s.mean()), "std": float(s.std()) if len(s) > 1 else 0.0},
           "spectrum_distance": spectrum_distance(real, recon),
           "spectrum_distance_unit": "RMS difference of mean log10 radial power spectra (decades)"}
    values = label_values or {}
    if labels is not None and "nodule" in values:
        out["nodule_survival"] = nodule_survival(real, recon, labels, values["nodule"], values.get("lung"))
    return out


def reconstruction_picture(real: torch.Tensor, recon: torch.Tensor, path, n: int = 6) -> None:
    """Rows: original, reconstruction, |difference| x4 (grey, 8 bit); one column per image (at most ``n``)."""
    k = min(n, real.shape[0])

    def to8(t: torch.Tensor) -> np.ndarray:
        return np.round(((t.clamp(-1, 1) + 1) * 127.5).numpy()).astype(np.uint8)

    rows = [np.concatenate([to8(real[i, 0]) for i in range(k)], 1),
            np.concatenate([to8(recon[i, 0]) for i in range(k)], 1),
            np.concatenate([to8((real[i, 0] - recon[i, 0]).abs() * 4 - 1) for i in range(k)], 1)]
    Image.fromarray(np.concatenate(rows, 0)).save(path)
