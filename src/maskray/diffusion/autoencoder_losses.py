"""Losses that make a KL autoencoder sharp: L1, a small KL term, and the seed paper's three terms, each with its
own weight.

The recipe is latent diffusion's autoencoder training (Rombach et al., CVPR 2022, Appendix G; Esser et al.,
"Taming Transformers", CVPR 2021, §3.1), written for single-channel radiographs and without any downloaded network:

- **perceptual**: distances between the features of a network that maskray trains itself on radiographs
  (``maskray.measures.features.FeatureNet``), at several depths. As in LPIPS (Zhang et al. 2018) each feature
  vector is normalised to unit length over channels before the squared distance; the depths are averaged
  with equal weights (there is no learned linear layer).
- **feature matching** (Wang et al., pix2pixHD, CVPR 2018, §3.2): L1 distances between the patch
  discriminator's intermediate features on the real and on the reconstructed image.
- **adversarial**: a PatchGAN discriminator (Isola et al. 2017) with the hinge loss, switched on after a
  warm-up of ``disc_start`` steps; its weight is fixed by default, or adaptive, ``||grad_L(rec)|| /
  ||grad_L(adv)||`` at the decoder's last layer (Taming Transformers, eq. 7), when ``adaptive`` is on. Fixed is
  the default because it was measured better at maskray's budgets: on the 256 px phantom, 400 steps, PSNR 32.3
  against 24.8 dB and SSIM 0.855 against 0.646, nodules kept as well; the adaptive weight grew from 5 to 44 once
  the discriminator started winning and the adversarial term swamped the reconstruction (bench_autoencoder.py).

The KL term is the posterior's KL divergence to N(0, I) summed over latent elements and divided by the
number of image pixels, the same scale as latent diffusion's ``kl_weight`` (1e-6) relative to its summed
reconstruction loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn


class FeatureExtractor(Protocol):
    def features(self, x: torch.Tensor) -> list[torch.Tensor]: ...


@dataclass(frozen=True)
class LossWeights:
    """Weight of each term; 0 switches a term off (its network is then neither run nor trained). The defaults
    (also ``maskray train autoencoder``'s) switch every term on: on the 256 px phantom the full recipe kept nodule
    contrast at 0.87 of the original against 0.43 for L1 + KL alone (benchmarks/bench_autoencoder.py)."""

    l1: float = 1.0
    kl: float = 1e-6
    perceptual: float = 1.0
    feature_matching: float = 1.0
    adversarial: float = 0.5
    disc_start: int = 0  # steps before the discriminator trains and its terms count
    adaptive: bool = False  # True: latent diffusion's adaptive adversarial weight; False: the weight as is

    @property
    def needs_discriminator(self) -> bool:
        return self.feature_matching > 0 or self.adversarial > 0


class PatchDiscriminator(nn.Module):
    """PatchGAN: strided 4x4 convolutions, GroupNorm and LeakyReLU; one logit per overlapping patch.

    ``forward(x)`` takes float ``(N, 1, H, W)`` in ``[-1, 1]`` and returns ``(logits (N, 1, h, w), features)``
    where ``features`` lists the activations after each hidden layer (for feature matching).
    """

    def __init__(self, channels: tuple[int, ...] = (32, 64, 128), groups: int = 8):
        super().__init__()
        layers, c_in = [], 1
        for i, c in enumerate(channels):
            stride = 2 if i < len(channels) - 1 else 1
            norm = nn.Identity() if i == 0 else nn.GroupNorm(min(groups, c), c)
            layers.append(nn.Sequential(nn.Conv2d(c_in, c, 4, stride, 1), norm, nn.LeakyReLU(0.2)))
            c_in = c
        self.hidden = nn.ModuleList(layers)
        self.head = nn.Conv2d(c_in, 1, 4, 1, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        feats = []
        for layer in self.hidden:
            x = layer(x)
            feats.append(x)
        return self.head(x), feats


def perceptual_distance(net: FeatureExtractor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean over depths of the spatially averaged squared distance of channel-normalised features."""
    fx, fy = net.features(x), net.features(y)
    terms = [(F.normalize(a, dim=1, eps=1e-8) - F.normalize(b, dim=1, eps=1e-8)).pow(2).sum(1).mean()
             for a, b in zip(fx, fy)]
    return torch.stack(terms).mean()


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def adaptive_weight(rec_loss: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor) -> torch.Tensor:
    """``||d rec / d w|| / (||d g / d w|| + 1e-4)`` at ``last_layer`` (clamped to [0, 1e4], no gradient)."""
    g_rec = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_adv = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    return (g_rec.norm() / (g_adv.norm() + 1e-4)).clamp(0.0, 1e4).detach()


class AutoencoderLoss(nn.Module):
    """Every term of the autoencoder objective; holds the discriminator (trained) and the feature net (frozen).

    Call :meth:`generator_loss` for the autoencoder's step and :meth:`discriminator_loss` for the
    discriminator's; both return ``(loss, parts)`` with ``parts`` the detached value of each term.
    """

    def __init__(self, weights: LossWeights, feature_net: nn.Module | None = None,
                 disc_channels: tuple[int, ...] = (32, 64, 128)):
        super().__init__()
        if weights.perceptual > 0 and feature_net is None:
            raise ValueError("a perceptual weight above 0 needs a feature network")
        self.weights = weights
        self.feature_net = feature_net
        if feature_net is not None:
            feature_net.requires_grad_(False).eval()
        self.discriminator = PatchDiscriminator(disc_channels) if weights.needs_discriminator else None

    def disc_active(self, step: int) -> bool:
        return self.discriminator is not None and step >= self.weights.disc_start

    def generator_loss(self, x: torch.Tensor, xrec: torch.Tensor, posterior, step: int,
                       last_layer: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss of the autoencoder. ``x``, ``xrec``: ``(N, 1, H, W)``; ``posterior``: diffusers
        ``DiagonalGaussianDistribution``; ``last_layer``: the decoder's output weight (adaptive weight)."""
        w = self.weights
        parts: dict[str, torch.Tensor] = {"l1": (x - xrec).abs().mean()}
        rec = w.l1 * parts["l1"]
        parts["kl"] = posterior.kl().sum() / x[:, :1].numel()
        if w.perceptual > 0:
            parts["perceptual"] = perceptual_distance(self.feature_net, x, xrec)
            rec = rec + w.perceptual * parts["perceptual"]
        total = rec + w.kl * parts["kl"]
        if self.disc_active(step):
            self.discriminator.requires_grad_(False)
            logits_fake, feats_fake = self.discriminator(xrec)
            if w.feature_matching > 0:
                with torch.no_grad():
                    _, feats_real = self.discriminator(x)
                parts["feature_matching"] = torch.stack(
                    [(a - b).abs().mean() for a, b in zip(feats_fake, feats_real)]).mean()
                rec = rec + w.feature_matching * parts["feature_matching"]
                total = total + w.feature_matching * parts["feature_matching"]
            if w.adversarial > 0:
                parts["adversarial"] = -logits_fake.mean()
                scale = w.adversarial
                if w.adaptive and last_layer is not None and torch.is_grad_enabled():
                    scale = scale * adaptive_weight(rec, parts["adversarial"], last_layer)
                parts["adversarial_weight"] = torch.as_tensor(float(scale))
                total = total + scale * parts["adversarial"]
            self.discriminator.requires_grad_(True)
        return total, {k: float(v.detach()) for k, v in parts.items()}

    def discriminator_loss(self, x: torch.Tensor, xrec: torch.Tensor,
                           step: int) -> tuple[torch.Tensor | None, dict[str, float]]:
        """Hinge loss of the discriminator on real ``x`` and detached ``xrec``; ``(None, {})`` before warm-up."""
        if not self.disc_active(step):
            return None, {}
        logits_real, _ = self.discriminator(x.detach())
        logits_fake, _ = self.discriminator(xrec.detach())
        loss = hinge_d_loss(logits_real, logits_fake)
        return loss, {"disc": float(loss.detach()), "logits_real": float(logits_real.detach().mean()),
                      "logits_fake": float(logits_fake.detach().mean())}
