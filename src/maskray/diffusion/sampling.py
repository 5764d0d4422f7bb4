"""One sampling loop for every diffusers scheduler, with mask guidance and a region-preserving mode.

Any scheduler with ``set_timesteps``, ``scale_model_input`` and ``step(model_output, t, sample, generator=)``
works; the names below are the ones the CLI offers. Classifier-free guidance on the mask (Ho & Salimans
2022) mixes the ControlNet's output for the mask with its output for an all-zero mask, which conditioning
dropout trained it to give.

Region-preserving generation follows RePaint (Lugmayr et al. 2022) without resampling jumps: after each
step, the pixels to keep are replaced by the real image noised to the same level, so the generated region
is drawn in agreement with its surroundings; the final image is composited with a feathered weight that is
exactly zero outside the region, so every pixel there keeps its input value.
"""

from __future__ import annotations

import inspect

import torch
from diffusers import (DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler,
                       UniPCMultistepScheduler)

from maskray.errors import MaskrayError
from maskray.diffusion.networks import ControlledUNet

SCHEDULERS = {
    "ddpm": (DDPMScheduler, {}),
    "ddim": (DDIMScheduler, {}),
    "dpm++": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "unipc": (UniPCMultistepScheduler, {}),
    "euler": (EulerDiscreteScheduler, {}),
}


def make_scheduler(name: str, train_scheduler_config: dict):
    """A sampling scheduler sharing the training noise schedule and prediction type."""
    key = name.lower()
    if key not in SCHEDULERS:
        raise MaskrayError(f"unknown scheduler '{name}' (allowed: {', '.join(SCHEDULERS)})")
    cls, extra = SCHEDULERS[key]
    cfg = {k: v for k, v in dict(train_scheduler_config).items() if not k.startswith("_")}
    return cls.from_config({**cfg, **extra})


def _autocast(device: torch.device, precision: str):
    if precision == "no":
        return torch.autocast(device.type, enabled=False)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


@torch.no_grad()
def sample(model: ControlledUNet, scheduler, shape: tuple[int, ...], generators: list[torch.Generator],
           cond: torch.Tensor | None = None, num_steps: int = 25, guidance_scale: float = 1.0,
           conditioning_scale: float = 1.0, known: torch.Tensor | None = None, keep: torch.Tensor | None = None,
           blend: torch.Tensor | None = None, precision: str = "bf16", device: torch.device | str = "cpu",
           channels_last: bool = False, clip: bool = True, composite: bool = True) -> torch.Tensor:
    """Draw ``shape[0]`` samples; returns float32 ``(N, C, H, W)``, clipped to ``[-1, 1]`` when ``clip`` (images;
    latents are not clipped).

    ``generators``: one per sample, so each sample depends on its own seed alone. ``cond``: one-hot mask
    ``(N, K, H, W)`` or ``None`` (base model). ``known``/``keep``/``blend``: region-preserving mode; ``known``
    is the real image ``(N, C, H, W)`` in ``[-1, 1]``, ``keep`` is 1 where its noised copy replaces the sample
    during sampling, and ``blend`` in ``[0, 1]`` (0 outside the region) weights the generated pixels in the
    final composite. ``composite=False`` leaves the final composite to the caller (latent models composite in
    pixel space, after decoding, with :func:`composite_region`).
    """
    device = torch.device(device)
    if len(generators) != shape[0]:
        raise ValueError("one generator per sample is required")
    scheduler.set_timesteps(num_steps, device=device)
    x = torch.stack([torch.randn(shape[1:], generator=g) for g in generators]).to(device)
    x = x * scheduler.init_noise_sigma
    if cond is not None:
        cond = cond.to(device)
    guided = cond is not None and guidance_scale != 1.0
    if known is not None:
        known, keep = known.to(device), keep.to(device)
    timesteps = scheduler.timesteps
    step_kw = {}
    if "generator" in inspect.signature(scheduler.step).parameters:  # stochastic samplers draw per-sample noise
        step_kw["generator"] = generators if len(generators) > 1 else generators[0]
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    if cond is not None:
        cond = cond.contiguous(memory_format=fmt)
    for i, t in enumerate(timesteps):
        inp = scheduler.scale_model_input(x, t).contiguous(memory_format=fmt)
        tt = t.expand(x.shape[0]) if t.ndim == 0 else t
        with _autocast(device, precision):
            if guided:
                both = model(torch.cat([inp, inp]), torch.cat([tt, tt]), torch.cat([cond, torch.zeros_like(cond)]),
                             conditioning_scale).float()
                out_c, out_u = both.chunk(2)
                out = out_u + guidance_scale * (out_c - out_u)
            else:
                out = model(inp, tt, cond, conditioning_scale).float()
        x = scheduler.step(out, t, x, **step_kw).prev_sample
        if known is not None and i + 1 < len(timesteps):
            noise = torch.stack([torch.randn(shape[1:], generator=g) for g in generators]).to(device)
            t_next = timesteps[i + 1]
            noisy_known = scheduler.add_noise(known, noise, t_next.expand(x.shape[0]) if t_next.ndim == 0 else t_next)
            x = keep * noisy_known + (1 - keep) * x
    if clip:
        x = x.clamp(-1, 1)
    if known is not None and composite:
        x = composite_region(x, known, blend.to(device) if blend is not None else (1 - keep))
    return x.cpu()


def composite_region(x: torch.Tensor, known: torch.Tensor, blend: torch.Tensor) -> torch.Tensor:
    """``blend * x + (1 - blend) * known`` inside the region, and exactly ``known`` where ``blend`` is 0."""
    blend = blend.to(x.device)
    known = known.to(x.device)
    return torch.where(blend > 0, blend * x + (1 - blend) * known, known)
