"""Stage-2 loss terms that make a ControlNet follow the mask where it says "no nodule" as well as where it says
"nodule" (the nodule-utility issue: generated images showed about 1.6 false nodules per image).

- **Region weighting** (``--region-weight W --region-ring R``): the denoising loss counts ``1 + W`` at every
  position of a lesion and of a ring of ``R`` pixels around it (max-pooled to the latent grid for a latent
  model), ``1`` elsewhere; the idea of MAISI-v2's region-specific term for small lesions.
- **Mask consistency** (``--consistency-weight W --consistency-checker CK``; ControlNet++, Li et al. 2024): at
  low noise (``t < --consistency-max-t``) the model's one-step clean estimate, decoded to pixels for a latent
  model, is segmented by a frozen checker (``maskray train checker`` on the real pairs), and the DiceCE loss of
  its prediction against the mask (every label: lungs, heart, nodules and the background where the mask has
  none) flows back through the frozen decoder into the ControlNet. Samples whose mask was dropped for guidance are
  left out (there is nothing to follow), and at most ``--consistency-batch`` samples a step are scored (the
  decoder's backward pass at 256 px is the cost).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss

from maskray.diffusion.objective import Denoised, clean_estimate, denoise, weighted_loss
from maskray.errors import MaskrayError
from maskray.measures.mask_check import Checker


@dataclass(frozen=True)
class MaskTermsConfig:
    region_weight: float = 0.0
    region_ring: int = 4
    consistency_weight: float = 0.0
    consistency_max_t: int = 200
    consistency_batch: int = 4
    consistency_checker: str | None = None
    lesion_label: str = "nodule"

    @property
    def active(self) -> bool:
        return self.region_weight > 0 or self.consistency_weight > 0


def lesion_region(labels: torch.Tensor, lesion: int, ring: int, factor: int) -> torch.Tensor:
    """float ``(N, 1, H/f, W/f)``: 1 where a lesion or its ``ring``-pixel surround falls in the cell, else 0."""
    region = (labels == lesion).float().unsqueeze(1)
    if ring > 0:
        region = F.max_pool2d(region, 2 * ring + 1, stride=1, padding=ring)
    return F.max_pool2d(region, factor) if factor > 1 else region


class CheckerLoss:
    """A frozen checker (``maskray train checker`` on the real pairs) as a loss: the DiceCE of its prediction on
    images against their label maps, every label (the background where the mask has none included). Gradients
    flow into the images, never into the checker. ``labels``: the data's label names -> values."""

    def __init__(self, folder: str, labels: dict[str, int]):
        self.checker = Checker.load(folder)
        missing = [n for n in labels if n not in self.checker.labels]
        if missing:
            raise MaskrayError(f"{folder}: the checker has no labels {missing}")
        self.net = self.checker.segmenter.net
        self.net.requires_grad_(False).eval()
        self.lut = torch.zeros(max(labels.values()) + 1, dtype=torch.int64)
        for name, v in labels.items():
            self.lut[v] = self.checker.segmenter.values.index(self.checker.labels[name])
        self.dice_ce = DiceCELoss(to_onehot_y=True, softmax=True, batch=True)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``images`` ``(N, 1, H, W)`` in ``[-1, 1]``, ``labels`` int ``(N, H, W)`` of the data's values."""
        logits = self.net(images.float().clamp(-1, 1).contiguous())
        target = self.lut[labels.cpu().long()].unsqueeze(1).to(logits.device)
        return self.dice_ce(logits.float(), target)


class MaskTerms:
    """The stage-2 loss with the terms of :class:`MaskTermsConfig`: ``loss(model_fn, x0, cond, labels, ...)``."""

    def __init__(self, cfg: MaskTermsConfig, labels: dict[str, int], codec, factor: int, prediction_type: str):
        self.cfg, self.labels, self.codec, self.factor, self.prediction_type = cfg, labels, codec, factor, \
            prediction_type
        if cfg.region_weight < 0 or cfg.consistency_weight < 0 or cfg.region_ring < 0:
            raise MaskrayError("--region-weight, --region-ring and --consistency-weight must be at least 0")
        if cfg.region_weight > 0 and cfg.lesion_label not in labels:
            raise MaskrayError(f"--region-weight: the data has no '{cfg.lesion_label}' label (labels: {list(labels)})")
        self.checker = None
        if cfg.consistency_weight > 0:
            if not cfg.consistency_checker:
                raise MaskrayError("--consistency-weight needs --consistency-checker (a folder of `maskray train "
                                   "checker`)")
            self.checker = CheckerLoss(cfg.consistency_checker, labels)
        self.last: dict[str, float] = {}  # the terms of the last step, for the log

    def loss(self, model_fn, x0: torch.Tensor, mask_cond: torch.Tensor | None, labels: torch.Tensor, scheduler,
             diffusion_cfg, generator: torch.Generator) -> torch.Tensor:
        d = denoise(model_fn, x0, scheduler, diffusion_cfg, generator)
        weight = None
        if self.cfg.region_weight > 0:
            region = lesion_region(labels.to(x0.device), self.labels[self.cfg.lesion_label], self.cfg.region_ring,
                                   self.factor)
            weight = 1 + self.cfg.region_weight * region
        total = weighted_loss(d, weight)
        self.last = {"diffusion": float(total.detach())}
        if self.checker is not None:
            term = self._consistency(d, mask_cond, labels, scheduler)
            if term is not None:
                self.last["consistency"] = float(term.detach())
                total = total + self.cfg.consistency_weight * term
        return total

    def _consistency(self, d: Denoised, mask_cond, labels: torch.Tensor, scheduler) -> torch.Tensor | None:
        kept = torch.ones(d.t.shape[0], dtype=torch.bool, device=d.t.device) if mask_cond is None else \
            mask_cond.flatten(1).abs().amax(1) > 0  # a dropped mask is all zeros
        pick = torch.nonzero(kept & (d.t < self.cfg.consistency_max_t)).flatten()[: self.cfg.consistency_batch]
        if pick.numel() == 0:
            return None
        sub = Denoised(d.t[pick], d.noisy[pick], d.target[pick], d.pred[pick], d.weight[pick])
        x0 = clean_estimate(sub, scheduler, self.prediction_type)
        image = self.codec.decode(x0) if self.codec is not None else x0
        return self.checker(image, labels[pick.cpu()])
