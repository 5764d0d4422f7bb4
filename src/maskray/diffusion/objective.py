"""The denoising objective: forward noising with a diffusers ``DDPMScheduler`` and a weighted regression loss.

Levers (measured in benchmarks/bench_learning.py):
- ``prediction_type``: epsilon (Ho et al. 2020) or v (Salimans & Ho 2022);
- min-SNR-gamma loss weighting (Hang et al. 2023): the per-timestep weight ``min(SNR, gamma) / SNR`` for
  epsilon and ``min(SNR, gamma) / (SNR + 1)`` for v, which keeps low-noise steps from dominating;
- ``timestep_bias``: timesteps drawn with density proportional to ``t ** bias``; ``bias > 0`` spends
  more steps at high noise, where the coarse layout (what a mask decides) is formed;
- ``snr_shift``: every timestep's signal-to-noise ratio divided by ``shift ** 2`` (the resolution shift of
  simple diffusion, Hoogeboom et al. 2023): an image with more redundant values (a larger one, or a latent with
  several channels per position) keeps its layout visible at noise levels that erase a small one's, so the
  schedule is moved towards noise to make the network learn the layout again. Stored as the scheduler's
  ``trained_betas``, which every diffusers sampler reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import torch
from diffusers import DDPMScheduler

from maskray.config import option


@dataclass(frozen=True)
class DiffusionConfig:
    prediction_type: Literal["epsilon", "v_prediction"] = option("v_prediction", help="network target")
    beta_schedule: Literal["squaredcos_cap_v2", "linear", "scaled_linear"] = option("squaredcos_cap_v2",
                                                                                      help="noise schedule")
    num_train_timesteps: int = option(1000, help="discrete diffusion steps")
    min_snr_gamma: float = option(5.0, help="min-SNR loss weighting gamma; 0 disables")
    timestep_bias: float = option(0.0, help="draw t with density ~ t**bias (0 = uniform)")
    snr_shift: float = option(1.0, help="divide each step's signal-to-noise ratio by this squared (1 = none)")


# Stage 1 on 4-channel latents of 256 px radiographs learns a chest's layout with the schedule shifted by 4 and
# not without it (800 steps: FID 0.71 against 1.48, precision 0.52 against 0.35, and every sample one chest;
# benchmarks/results/stage1_layout_800.json). Pixel models keep 1.
LATENT_SNR_SHIFT = 4.0


def shifted_betas(alphas_cumprod: torch.Tensor, shift: float) -> list[float]:
    """Betas whose cumulative products give ``SNR(t) / shift**2`` for the schedule ``alphas_cumprod``."""
    ac = alphas_cumprod.double()
    shifted = ac / (ac + shift ** 2 * (1 - ac))
    previous = torch.cat([torch.ones(1, dtype=torch.float64), shifted[:-1]])
    return (1 - shifted / previous).tolist()


def make_train_scheduler(cfg: DiffusionConfig) -> DDPMScheduler:
    sched = DDPMScheduler(num_train_timesteps=cfg.num_train_timesteps, beta_schedule=cfg.beta_schedule,
                          prediction_type=cfg.prediction_type, clip_sample=False)
    if cfg.snr_shift == 1.0:
        return sched
    return DDPMScheduler.from_config(sched.config, trained_betas=shifted_betas(sched.alphas_cumprod, cfg.snr_shift))


def train_scheduler(config: dict) -> DDPMScheduler:
    """The training noise scheduler a model card's ``scheduler_config`` describes (maskray's own schedule, or a
    Stable Diffusion folder's, whose betas the :class:`DiffusionConfig` fields do not hold)."""
    return DDPMScheduler.from_config(dict(config))


def sample_timesteps(n: int, cfg: DiffusionConfig, generator: torch.Generator) -> torch.Tensor:
    """int64 ``(n,)`` in ``[0, T)``; uniform, or with density ~ ``t ** bias``."""
    u = torch.rand(n, generator=generator)
    if cfg.timestep_bias > 0:
        u = u ** (1.0 / (1.0 + cfg.timestep_bias))
    return (u * cfg.num_train_timesteps).long().clamp_(0, cfg.num_train_timesteps - 1)


@dataclass
class Denoised:
    """One training draw: timesteps ``t``, the noisy input, the target and the network's (fp32) output, and the
    per-sample min-SNR weight (ones when it is off)."""

    t: torch.Tensor
    noisy: torch.Tensor
    target: torch.Tensor
    pred: torch.Tensor
    weight: torch.Tensor


def denoise(model_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x0: torch.Tensor,
            scheduler: DDPMScheduler, cfg: DiffusionConfig, generator: torch.Generator) -> Denoised:
    """Noise clean samples ``x0`` (float ``(N, C, H, W)``) at random timesteps and run ``model_fn(noisy, t)``.

    The noise and timesteps are drawn from ``generator`` so that a training step is a pure function of its seed
    (exact resume)."""
    n = x0.shape[0]
    t = sample_timesteps(n, cfg, generator).to(x0.device)
    noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
    noisy = scheduler.add_noise(x0, noise, t)
    target = noise if cfg.prediction_type == "epsilon" else scheduler.get_velocity(x0, noise, t)
    pred = model_fn(noisy, t).float()
    weight = torch.ones(n, device=x0.device)
    if cfg.min_snr_gamma > 0:
        ac = scheduler.alphas_cumprod.to(x0.device)[t]
        snr = ac / (1 - ac)
        clipped = torch.clamp(snr, max=cfg.min_snr_gamma)
        weight = clipped / snr if cfg.prediction_type == "epsilon" else clipped / (snr + 1)
    return Denoised(t, noisy, target, pred, weight)


def clean_estimate(d: Denoised, scheduler: DDPMScheduler, prediction_type: str) -> torch.Tensor:
    """The one-step estimate of the clean sample from the network's output (differentiable in ``d.pred``)."""
    ac = scheduler.alphas_cumprod.to(d.pred.device)[d.t].view(-1, 1, 1, 1).float()
    if prediction_type == "epsilon":
        return (d.noisy.float() - (1 - ac).sqrt() * d.pred) / ac.sqrt()
    return ac.sqrt() * d.noisy.float() - (1 - ac).sqrt() * d.pred


def diffusion_loss(model_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x0: torch.Tensor,
                   scheduler: DDPMScheduler, cfg: DiffusionConfig, generator: torch.Generator,
                   pixel_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Weighted denoising loss for clean samples ``x0`` (float ``(N, C, H, W)`` in ``[-1, 1]``).

    ``model_fn(noisy, t)`` returns the network output. ``pixel_weight`` (``(N, 1, H, W)``, optional) weights each
    position's squared error (region weighting: lesions and their ring count more)."""
    return weighted_loss(denoise(model_fn, x0, scheduler, cfg, generator), pixel_weight)


def weighted_loss(d: Denoised, pixel_weight: torch.Tensor | None = None) -> torch.Tensor:
    err = (d.pred - d.target).pow(2)
    if pixel_weight is not None:
        err = err * pixel_weight
    return (err.mean(dim=(1, 2, 3)) * d.weight).mean()
