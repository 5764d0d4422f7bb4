"""Realism that sees texture: how far the synthetic images are from the real distribution, beside the floor
(real test against real train) and a known failure (the real test images blurred, i.e. too smooth).

Two measures:

- **Power spectrum**: :func:`maskray.measures.image.spectrum_distance`, the RMS difference of the mean log10
  radial power spectra, in decades. Smooth images lack high-frequency power, so it rises.
- **Feature space**: FID, KID and k-NN precision/recall (:mod:`maskray.measures.distributions`) in the embedding
  of the self-supervised :class:`maskray.measures.features.FeatureNet` trained on the real training split
  (or loaded with ``--feature-net``), or of a local TorchScript extractor (``--feature-weights``).

Each synthetic distance is flagged ``behind_real`` when it exceeds the floor: a synthetic set that matched the
real distribution would score at the floor. FID (biased upward
at small sample sizes) and precision/recall depend on the number of images, so the floor and the synthetic set
are scored at the same size: the smaller of the two, a seeded subset of the larger.
"""

from __future__ import annotations

import torch
from monai.networks.layers import GaussianFilter

from maskray.measures import distributions as feat
from maskray.measures.image import spectrum_distance

BLUR_SIGMA = 1.0  # pixels: enough to erase single-pixel texture, little enough to keep the anatomy


def blur(images: torch.Tensor, sigma: float = BLUR_SIGMA) -> torch.Tensor:
    """Gaussian blur (MONAI's ``GaussianFilter``) of ``(N, 1, H, W)`` images: the 'too smooth' reference."""
    with torch.no_grad():
        return GaussianFilter(spatial_dims=2, sigma=sigma)(images.float())


def realism(xtr: torch.Tensor, xte: torch.Tensor, xs: torch.Tensor, embed, space: str, seed: int = 0) -> dict:
    """Distances of the real test set (floor), the synthetic set and the blurred real test set from the real
    training set, each with the same number of images. ``embed``: ``(N, 1, H, W)`` -> ``(N, D)`` features.
    Returns the realism section."""
    n = min(len(xte), len(xs))
    gen = torch.Generator().manual_seed(seed)
    xte = xte[torch.randperm(len(xte), generator=gen)[:n].sort().values] if len(xte) > n else xte
    xs = xs[torch.randperm(len(xs), generator=gen)[:n].sort().values] if len(xs) > n else xs
    queries = {"floor_real_test": xte, "synthetic": xs, "blurred_real_test": blur(xte)}
    ftr = embed(xtr).numpy()
    spectrum = {name: spectrum_distance(xtr, x) for name, x in queries.items()}
    features = {name: feat.distances(ftr, embed(x).numpy(), seed) for name, x in queries.items()}
    floor_f, syn_f = features["floor_real_test"], features["synthetic"]
    return {
        "reference": "real training split", "images_per_set": n,
        "power_spectrum": {
            "definition": "RMS over radii of the difference of mean log10 radial power spectra (decades)",
            **spectrum, "synthetic_behind_real": spectrum["synthetic"] > spectrum["floor_real_test"]},
        "features": {"feature_space": space, "feature_dim": int(ftr.shape[1]), **features,
                     "synthetic_behind_real": {"fid": syn_f["fid"] > floor_f["fid"],
                                               "kid": syn_f["kid"]["mean"] > floor_f["kid"]["mean"],
                                               "precision": syn_f["precision"] < floor_f["precision"]}},
        "blur_sigma_px": BLUR_SIGMA,
        "note": "floor: real test vs real train; blurred real test: what a too-smooth set scores",
    }
