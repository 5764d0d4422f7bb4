"""Edge maps as a condition: scikit-image's Canny detector (Canny 1986) on each image at the model's resolution.

An edge map fixes a radiograph's structure (body outline, ribs, heart and diaphragm borders) and leaves its
texture and exposure free, so a ControlNet conditioned on it draws the same anatomy with other texture. The
detector's parameters are part of the model (the model card's ``conditions["edges"]``): generation computes the
edge maps of ``--edges-from`` images with exactly the parameters used in training.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from skimage.feature import canny

from maskray.errors import MaskrayError


@dataclass(frozen=True)
class EdgeConfig:
    """``skimage.feature.canny`` settings. With ``use_quantiles`` the thresholds are quantiles of each image's
    gradient magnitude, so images of any exposure give edge maps of similar density."""

    sigma: float = 1.0
    low_threshold: float = 0.75
    high_threshold: float = 0.9
    use_quantiles: bool = True

    def to_card(self) -> dict[str, Any]:
        return {"detector": "skimage.feature.canny", "sigma": self.sigma, "low_threshold": self.low_threshold,
                "high_threshold": self.high_threshold, "use_quantiles": self.use_quantiles}

    @classmethod
    def from_card(cls, params: dict[str, Any], where: str = "model card") -> "EdgeConfig":
        if params.get("detector") != "skimage.feature.canny":
            raise MaskrayError(f"{where}: edge detector {params.get('detector')!r} unknown "
                               f"(this maskray makes skimage.feature.canny edge maps)")
        try:
            return cls(sigma=float(params["sigma"]), low_threshold=float(params["low_threshold"]),
                       high_threshold=float(params["high_threshold"]), use_quantiles=bool(params["use_quantiles"]))
        except (KeyError, TypeError, ValueError) as e:
            raise MaskrayError(f"{where}: edge parameters incomplete or ill-typed ({e})") from None


def edge_map(images: torch.Tensor, cfg: EdgeConfig) -> torch.Tensor:
    """float ``(N, 1, H, W)`` images in ``[-1, 1]`` -> float32 ``(N, 1, H, W)`` edge maps in ``{0, 1}``."""
    arr = ((images.detach().float().cpu().clamp(-1, 1) + 1) / 2).numpy()
    out = np.stack([canny(a[0], sigma=cfg.sigma, low_threshold=cfg.low_threshold,
                          high_threshold=cfg.high_threshold, use_quantiles=cfg.use_quantiles) for a in arr])
    return torch.from_numpy(out[:, None].astype(np.float32))
