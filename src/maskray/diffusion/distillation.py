"""Few-step distillation: a student that samples in ``k`` DDIM steps what the teacher samples in many.

Progressive distillation (Salimans & Ho, ICLR 2022) halves the step count per round, the student of each round
matching two DDIM steps of its teacher with one. Here the rounds are folded into one: the student's DDIM step
from ``tau_i`` to ``tau_{i+1}`` (its own ``k``-step grid) is trained to land where ``m`` DDIM steps of the teacher
land from the same noisy sample (the teacher's grid subdivided), which a CPU budget affords and which needs no
chain of intermediate students. The target follows the paper's eq. 8: the clean estimate ``x~`` for which one DDIM
step (eq. 7, eta = 0) from ``z_t`` gives the teacher's ``z_t'``,

    x~ = (z_t' - (sigma_t' / sigma_t) z_t) / (alpha_t' - (sigma_t' / sigma_t) alpha_t),

with ``alpha_t' = 1, sigma_t' = 0`` (so ``x~ = z_t'``) for the last step. The student keeps the teacher's
prediction target; the loss is the squared error of its output against the target's ``epsilon`` or ``v`` (for
``v`` that is the paper's "SNR + 1" weighting of the ``x`` error). The student's grid is DDIM's ``trailing``
spacing, whose first step starts at ``t = T - 1`` (pure noise) rather than ``T - T/k`` (Lin et al. 2024), so the
student learns from the state sampling starts in.
"""

from __future__ import annotations

from typing import Callable

import torch
from diffusers import DDIMScheduler

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (z (N, C, H, W), t (N,)) -> network output
STUDENT_SPACING = "trailing"


def student_grid(scheduler_config: dict, steps: int) -> torch.Tensor:
    """int64 ``(steps + 1,)``: the student's DDIM timesteps, then ``-1`` for "clean" (alpha = 1)."""
    cfg = {k: v for k, v in dict(scheduler_config).items() if not k.startswith("_")}
    sched = DDIMScheduler.from_config({**cfg, "timestep_spacing": STUDENT_SPACING, "set_alpha_to_one": True})
    sched.set_timesteps(steps)
    return torch.cat([sched.timesteps.long(), torch.tensor([-1])])


def _alpha_sigma(alphas_cumprod: torch.Tensor, t: torch.Tensor, ndim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``alpha_t, sigma_t`` shaped for broadcasting over ``(N, C, H, W)``; ``t = -1`` is clean (1, 0)."""
    ac = torch.where(t >= 0, alphas_cumprod[t.clamp_min(0)], torch.ones_like(alphas_cumprod[0]))
    shape = (-1,) + (1,) * (ndim - 1)
    return ac.sqrt().view(shape), (1 - ac).clamp_min(0).sqrt().view(shape)


def clean_estimate(out: torch.Tensor, z: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor,
                   prediction_type: str) -> torch.Tensor:
    """``x0`` from a network output: ``(z - sigma eps) / alpha`` or ``alpha z - sigma v``."""
    if prediction_type == "epsilon":
        return (z - sigma * out) / alpha
    return alpha * z - sigma * out


def output_for(x: torch.Tensor, z: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor,
               prediction_type: str) -> torch.Tensor:
    """The network output that makes ``clean_estimate`` return ``x`` at ``z``."""
    eps = (z - alpha * x) / sigma
    return eps if prediction_type == "epsilon" else alpha * eps - sigma * x


@torch.no_grad()
def teacher_jump(teacher: ModelFn, z: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor, substeps: int,
                 alphas_cumprod: torch.Tensor, prediction_type: str) -> torch.Tensor:
    """``substeps`` deterministic DDIM steps of the teacher from ``z`` at ``t`` to ``t_next`` (per sample, int64
    ``(N,)``; ``-1`` = clean). The last step to ``-1`` returns the clean estimate clipped to ``[-1, 1]``, as
    sampling does."""
    for j in range(substeps):
        a = t + torch.div((t_next - t) * j, substeps, rounding_mode="floor")
        b = t + torch.div((t_next - t) * (j + 1), substeps, rounding_mode="floor")
        alpha, sigma = _alpha_sigma(alphas_cumprod, a, z.ndim)
        x = clean_estimate(teacher(z, a).float(), z, alpha, sigma, prediction_type)
        alpha_b, sigma_b = _alpha_sigma(alphas_cumprod, b, z.ndim)
        eps = (z - alpha * x) / sigma
        z = alpha_b * x + sigma_b * eps
    final = (t_next < 0).view(-1, *([1] * (z.ndim - 1)))
    return torch.where(final, z.clamp(-1, 1), z)


def distillation_loss(student: ModelFn, teacher: ModelFn, x0: torch.Tensor, grid: torch.Tensor, substeps: int,
                      alphas_cumprod: torch.Tensor, prediction_type: str,
                      generator: torch.Generator) -> torch.Tensor:
    """Mean squared error of the student's output against the distillation target, for clean samples ``x0``
    (float ``(N, C, H, W)``): each sample draws one of the student's steps and a noise, both from ``generator``."""
    n = x0.shape[0]
    i = torch.randint(0, len(grid) - 1, (n,), generator=generator)
    t, t_next = grid[i].to(x0.device), grid[i + 1].to(x0.device)
    noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
    ac = alphas_cumprod.to(x0.device, torch.float32)
    alpha, sigma = _alpha_sigma(ac, t, x0.ndim)
    z = alpha * x0 + sigma * noise
    z_next = teacher_jump(teacher, z, t, t_next, substeps, ac, prediction_type)
    alpha_n, sigma_n = _alpha_sigma(ac, t_next, x0.ndim)
    ratio = sigma_n / sigma
    target_x = (z_next - ratio * z) / (alpha_n - ratio * alpha)
    target = output_for(target_x, z, alpha, sigma, prediction_type)
    return (student(z, t).float() - target).pow(2).mean()
