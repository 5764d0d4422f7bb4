"""One sampling loop for every diffusers scheduler, with mask guidance and a region-preserving mode.

Any scheduler with ``set_timesteps``, ``scale_model_input`` and ``step(model_output, t, sample, generator=)``
works; the names below are the ones the CLI offers. Classifier-free guidance on the mask (Ho & Salimans
2022) mixes the ControlNet's output for the mask with its output for an all-zero mask, which conditioning
dropout trained it to give. With several conditions and patient attributes, each guided term k (a condition, all
conditions at once, or the attributes) adds ``(g_k - 1) * (out_full - out_without_k)`` to the full output: with one
term this is the usual ``out_u + g * (out_c - out_u)``, a term with ``g_k = 1`` costs no network pass, and each
other term costs one (composable guidance, Liu et al. 2022, with "without k" as the reference of each term).

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
from maskray.diffusion.conditioning import ATTRIBUTES, Conditions, as_conditions
from maskray.diffusion.networks import ControlledUNet

SCHEDULERS = {
    "ddpm": (DDPMScheduler, {}),
    "ddim": (DDIMScheduler, {}),
    "dpm++": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "unipc": (UniPCMultistepScheduler, {}),
    "euler": (EulerDiscreteScheduler, {}),
}


def check_scheduler_name(name: str) -> str:
    """``name`` as :data:`SCHEDULERS` keys it; an unknown name is a one-line error."""
    key = name.lower()
    if key not in SCHEDULERS:
        raise MaskrayError(f"unknown scheduler '{name}' (allowed: {', '.join(SCHEDULERS)})")
    return key


def make_scheduler(name: str, train_scheduler_config: dict):
    """A sampling scheduler sharing the training noise schedule and prediction type."""
    cls, extra = SCHEDULERS[check_scheduler_name(name)]
    cfg = {k: v for k, v in dict(train_scheduler_config).items() if not k.startswith("_")}
    return cls.from_config({**cfg, **extra})


def _autocast(device: torch.device, precision: str):
    if precision == "no":
        return torch.autocast(device.type, enabled=False)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def guidance_terms(cond: Conditions, guidance_scale: float | dict[str, float], attribute_guidance: float = 1.0,
                   lesion_guidance: float = 0.0, lesion_channels: tuple[int, int] | None = None
                   ) -> list[tuple[float, Conditions]]:
    """``[(g_k, reference k)]`` for every guided term whose scale is not 1 (the reference: the conditions without
    k).

    ``guidance_scale``: a number guides all condition maps together (the mask of a one-condition model); a
    ``{condition: g}`` mapping guides each named one alone. ``attribute_guidance`` guides the attribute vector.
    ``lesion_guidance`` ``w > 0`` adds ``w * (out_full - out_lesions_everywhere)``: away from the mask with the
    lung fields relabelled as nodule (``lesion_channels``: its (nodule, lung) channels), a negative prompt on
    "nodule" wherever the mask holds none."""
    terms: list[tuple[float, Conditions]] = []
    if isinstance(guidance_scale, dict):
        unknown = sorted(set(guidance_scale) - set(cond.maps))
        if unknown:
            raise MaskrayError(f"guidance for unknown condition(s) {unknown} (this model's: {', '.join(cond.maps)})")
        absent = sorted(k for k, g in guidance_scale.items() if float(g) != 1.0 and cond.maps[k] is None)
        if absent:
            raise MaskrayError(f"guidance on condition(s) {absent}, which are not given (edges need --edges-from)")
        terms += [(float(g), cond.without(k)) for k, g in guidance_scale.items() if float(g) != 1.0]
    elif guidance_scale != 1.0 and cond.maps:
        terms.append((float(guidance_scale), cond.without(None)))
    if attribute_guidance != 1.0:
        if cond.attributes is None:
            raise MaskrayError("--attribute-guidance needs --attributes (and a model trained with attributes)")
        terms.append((float(attribute_guidance), cond.without(ATTRIBUTES)))
    if lesion_guidance:
        if lesion_channels is None:
            raise MaskrayError("lesion guidance needs the mask's nodule and lung channels")
        terms.append((1.0 + float(lesion_guidance), cond.with_lesion_over(*lesion_channels)))
    return terms


def _guided(model: ControlledUNet, inp, tt, cond: Conditions, terms, conditioning_scale) -> torch.Tensor:
    """One network pass over the full condition and every term's reference, stacked along the batch."""
    k = 1 + len(terms)
    both = model(torch.cat([inp] * k), torch.cat([tt] * k), Conditions.cat([cond] + [c for _, c in terms]),
                 conditioning_scale).float()
    outs = both.chunk(k)
    out = outs[0]
    for (g, _), ref in zip(terms, outs[1:]):
        out = out + (g - 1.0) * (outs[0] - ref)
    return out


@torch.no_grad()
def sample(model: ControlledUNet, scheduler, shape: tuple[int, ...], generators: list[torch.Generator],
           cond: torch.Tensor | Conditions | None = None, num_steps: int = 25,
           guidance_scale: float | dict[str, float] = 1.0, conditioning_scale: float | dict[str, float] = 1.0,
           known: torch.Tensor | None = None, keep: torch.Tensor | None = None, blend: torch.Tensor | None = None,
           precision: str = "bf16", device: torch.device | str = "cpu", channels_last: bool = False,
           clip: bool = True, composite: bool = True, attribute_guidance: float = 1.0, lesion_guidance: float = 0.0,
           lesion_channels: tuple[int, int] | None = None) -> torch.Tensor:
    """Draw ``shape[0]`` samples; returns float32 ``(N, C, H, W)``, clipped to ``[-1, 1]`` when ``clip`` (images;
    latents are not clipped).

    ``generators``: one per sample, so each sample depends on its own seed alone. ``cond``: one-hot mask
    ``(N, K, H, W)``, a :class:`Conditions` (named maps and attribute vector) or ``None`` (base model).
    ``guidance_scale`` / ``attribute_guidance`` / ``lesion_guidance`` / ``conditioning_scale``: see
    :func:`guidance_terms` and
    :class:`ControlledUNet`. ``known``/``keep``/``blend``: region-preserving mode; ``known``
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
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    conds = as_conditions(cond).to(device, fmt)
    terms = guidance_terms(conds, guidance_scale, attribute_guidance, lesion_guidance, lesion_channels)
    if known is not None:
        known, keep = known.to(device), keep.to(device)
    timesteps = scheduler.timesteps
    step_kw = {}
    if "generator" in inspect.signature(scheduler.step).parameters:  # stochastic samplers draw per-sample noise
        step_kw["generator"] = generators if len(generators) > 1 else generators[0]
    for i, t in enumerate(timesteps):
        inp = scheduler.scale_model_input(x, t).contiguous(memory_format=fmt)
        tt = t.expand(x.shape[0]) if t.ndim == 0 else t
        with _autocast(device, precision):
            if terms:
                out = _guided(model, inp, tt, conds, terms, conditioning_scale)
            else:
                out = model(inp, tt, conds, conditioning_scale).float()
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
