"""One object that owns a trained model: :class:`MaskModel`.

Built from a model folder (:meth:`MaskModel.load`), it holds what the card says the model is: the networks (the
base UNet and its ControlNets joined as one :class:`ControlledUNet`), the codec (the latent path's autoencoder, a
Stable Diffusion VAE, or none for a pixel model), the noise schedule and the sampling defaults. Everything that
draws images goes through it: ``generate``, ``serve``, the training validation strips and distillation's teacher.

A model's life::

    card (maskray.json) --load--> MaskModel --sample--> images
                 ^                     |  \
                 +-------save----------+   training_loss (a stage's objective, or the denoising loss)

Training builds the object from a stage's networks and card (training/stage_setup.py) and calls
:meth:`MaskModel.training_loss`; a stage with its own loss (stage 2's mask terms, distillation) hands it in as
``objective``.

The improved-diffusion ``GaussianDiffusion`` and diffusers' ``DiffusionPipeline`` are the shapes learned from:
the networks and the schedule behind one object, the sampling loop (diffusion/sampling.py) one call away.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.nn.functional import max_pool2d

from maskray.diffusion.card import ModelCard
from maskray.diffusion.conditioning import parse_scales
from maskray.diffusion.fused import prepare_for_sampling
from maskray.diffusion.networks import ControlledUNet
from maskray.diffusion.objective import DiffusionConfig, diffusion_loss, train_scheduler
from maskray.diffusion.sampling import check_scheduler_name, composite_region, make_scheduler, sample
from maskray.diffusion.store import load_codec, load_model, model_folder, save_model
from maskray.errors import MaskrayError
from maskray.memory import keep_freed_memory

DEFAULT_SAMPLER = ("ddpm", 25)  # benchmarks/results/steps.json: best lung Dice on real radiographs, at the PSNR bound


class _Counted(nn.Module):
    """The networks, calling ``tick`` after each evaluation (one per sampler step, per guidance pass batch)."""

    def __init__(self, net: nn.Module, tick: Callable[[], None]):
        super().__init__()
        self.net, self.tick = net, tick

    def forward(self, *args, **kwargs):
        out = self.net(*args, **kwargs)
        self.tick()
        return out


@dataclass(frozen=True)
class SamplerSettings:
    """How one run samples, resolved and checked by :meth:`MaskModel.sampler_settings`: the sampler's name and
    steps, the guidance and conditioning scales (a number for every condition, or ``{condition: scale}``) and the
    attribute guidance."""

    scheduler: str
    steps: int
    guidance_scale: float | dict[str, float] = 1.0
    conditioning_scale: float | dict[str, float] = 1.0
    attribute_guidance: float = 1.0
    lesion_guidance: float = 0.0
    guidance_text: str = "1"  # the guidance as the run gave it or the card's default, for the run's record


LESION, REGION = "nodule", "lung"  # lesion guidance: the label it keeps out of the lung fields, and those fields

Objective = Callable[..., torch.Tensor]  # (model_fn, x0, cond, noise_schedule, generator, labels) -> loss


class MaskModel:
    """A maskray model: ``net`` (a :class:`ControlledUNet`), ``card`` (its :class:`ModelCard`), ``codec``
    (``None`` for a pixel model), when loaded from disk ``folder``, and in training the stage's ``objective``
    (``None``: the denoising loss of the card's diffusion config)."""

    def __init__(self, net: ControlledUNet, card: ModelCard, codec=None, folder: Path | None = None,
                 objective: Objective | None = None):
        self.net, self.card, self.codec, self.folder, self.objective = net, card, codec, folder, objective

    # ---------------------------------------------------------------------------------------------- training
    @cached_property
    def diffusion(self) -> DiffusionConfig:
        """The target and loss weighting the card records (a stage-2 card: its own weighting on its base's
        schedule)."""
        return DiffusionConfig(**self.card.diffusion)

    @cached_property
    def noise_schedule(self):
        """The training noise schedule of the card (the samplers' schedule too)."""
        return train_scheduler(self.card.scheduler_config)

    def training_loss(self, x0: torch.Tensor, cond, generator: torch.Generator, labels: torch.Tensor | None = None,
                      *, conditioning_scale: float = 1.0, autocast=contextlib.nullcontext) -> torch.Tensor:
        """The loss of one batch of clean images (or latents) ``x0`` under condition ``cond`` (and their label
        maps, for stage 2's mask terms), noised with ``generator``: the stage's objective, else the denoising
        loss. ``autocast``: the context the networks run in (the trainer's mixed precision)."""
        def model_fn(noisy, t):
            with autocast():
                return self.net(noisy, t.to(x0.device), cond, conditioning_scale)

        if self.objective is not None:
            return self.objective(model_fn, x0, cond, self.noise_schedule, generator, labels)
        return diffusion_loss(model_fn, x0, self.noise_schedule, self.diffusion, generator)

    # ---------------------------------------------------------------------------------------------- storage
    @classmethod
    def load(cls, path: str | os.PathLike, need_controlnet: bool = False, prompt: str | None = None,
             pretrained: str | os.PathLike | None = None) -> MaskModel:
        """The model behind ``path`` (a run, its model folder or a checkpoint), every part checked against the
        card's hashes; ``prompt`` / ``pretrained`` are for a ControlNet on a Stable Diffusion folder."""
        net, card = load_model(path, need_controlnet=need_controlnet, prompt=prompt, pretrained=pretrained)
        return cls(net, card, load_codec(path, card, pretrained=pretrained), model_folder(path))

    def save(self, folder: str | os.PathLike) -> Path:
        """Write the model folder (networks, autoencoder, card with the weight hashes filled in)."""
        return save_model(folder, self.net.unet, self.card, controlnet=self.net.controlnet, codec=self.codec)

    @property
    def record(self) -> dict:
        """What identifies the model in an output: stage, size, training step and weight hashes (never a path)."""
        return {"stage": self.card.stage, "image_size": self.card.image_size, "step": self.card.step,
                "latent": self.card.latent is not None, "unet_sha256": self.card.unet_sha256,
                "controlnet_sha256": self.card.controlnet_sha256}

    # ---------------------------------------------------------------------------------------------- sampling
    def sampler_defaults(self, scheduler: str | None = None, steps: int | None = None,
                         guidance_scale: str | None = None) -> tuple[str, int, str]:
        """``(scheduler, steps, guidance)`` with each unset one from the card (a distilled model names the sampler
        it was trained for, a latent mask model its mask guidance), else ``DEFAULT_SAMPLER`` and no guidance."""
        own = self.card.sampling
        return (scheduler or own.get("scheduler") or DEFAULT_SAMPLER[0],
                steps if steps is not None else own.get("steps") or DEFAULT_SAMPLER[1],
                guidance_scale if guidance_scale is not None else str(own.get("guidance_scale", "1")))

    def sampler_settings(self, scheduler: str | None = None, steps: int | None = None, guidance_scale=None,
                         conditioning_scale=1.0, attribute_guidance: float = 1.0, lesion_guidance: float = 0.0, *,
                         attributes_given: bool = False, edges_given: bool = False) -> SamplerSettings:
        """The options of a run (as the CLI takes them: ``"mask=2,edges=1"`` or a number) resolved against the
        card (:meth:`sampler_defaults`) and checked before any output: an unknown sampler or condition, and
        guidance on what the run does not give (attributes without ``attributes_given``, edges without
        ``edges_given``, lesion guidance without nodule and lung labels) are one-line errors."""
        name, steps, guidance = self.sampler_defaults(scheduler, steps, guidance_scale)
        check_scheduler_name(name)
        names = self.card.condition_names
        out = SamplerSettings(name, int(steps), parse_scales(guidance, names, "--guidance-scale"),
                              parse_scales(conditioning_scale, names, "--conditioning-scale"),
                              float(attribute_guidance), float(lesion_guidance), str(guidance))
        if out.attribute_guidance != 1.0 and not attributes_given:
            raise MaskrayError("--attribute-guidance needs --attributes NAME=VALUE,... (what to guide towards)")
        if isinstance(out.guidance_scale, dict) and out.guidance_scale.get("edges", 1.0) != 1.0 and not edges_given:
            raise MaskrayError("--guidance-scale names edges, which this run does not give (edges need "
                               "--edges-from REAL)")
        if out.lesion_guidance < 0:
            raise MaskrayError(f"--lesion-guidance {lesion_guidance}: must be 0 (off) or more")
        if out.lesion_guidance and self.lesion_channels is None:
            raise MaskrayError(f"--lesion-guidance needs a model that follows a mask with '{LESION}' and '{REGION}' "
                               f"labels (this one: {', '.join(self.card.labels) or 'none'})")
        return out

    @property
    def lesion_channels(self) -> tuple[int, int] | None:
        """The mask condition's (nodule, lung) channels, or None where the model does not follow such a mask."""
        names = list(self.card.labels)
        if "mask" not in self.card.condition_names or LESION not in names or REGION not in names:
            return None
        return names.index(LESION), names.index(REGION)

    @property
    def default_guidance(self) -> float:
        """The mask guidance the card asks for (a latent mask model: 1.5), else 1."""
        return float(self.card.sampling.get("guidance_scale", 1.0))

    def scheduler(self, name: str):
        """A fresh sampler ``name`` on the model's training noise schedule (an unknown name is an error)."""
        return make_scheduler(name, self.card.scheduler_config)

    def prepare(self, device: torch.device, precision: str, channels_last: bool, fused: bool = True) -> dict:
        """Ready the networks (and the codec's decoder) for sampling only, with freed memory kept; returns which
        kernels run, ``{"sampling", "decoding" (latent models), "allocator"}``, for the output's record."""
        kernels = {"sampling": prepare_for_sampling(self.net, device, precision, channels_last, fused),
                   "allocator": keep_freed_memory()}
        if self.codec is not None:
            kernels["decoding"] = self.codec.prepare_for_decoding(device, precision, channels_last, fused)
        return kernels

    @torch.no_grad()
    def sample(self, generators: list[torch.Generator], cond, settings: SamplerSettings, *, precision: str,
               device: torch.device, channels_last: bool = False, known: torch.Tensor | None = None,
               keep: torch.Tensor | None = None, blend: torch.Tensor | None = None,
               on_step: Callable[[], None] | None = None, decode: bool = True) -> torch.Tensor:
        """Images float32 ``(N, 1, H, W)`` in ``[-1, 1]``, one per generator, drawn with ``settings`` (from
        :meth:`sampler_settings`; a fresh sampler of the schedule each call): sampled in pixel space, or in latent
        space then decoded.

        Region-preserving mode (``known``: the real images, ``keep`` 1 where they are kept, ``blend`` the
        composite's weight of the new pixels): a latent model keeps the real latents outside the
        latent-resolution region while sampling (any edited pixel frees its latent) and composites in pixel
        space after decoding, so every pixel outside the region keeps its value exactly. ``on_step`` is called
        after every network evaluation (progress). ``decode=False``: a latent model's scaled latents instead."""
        net = self.net if on_step is None else _Counted(self.net, on_step)
        scheduler = self.scheduler(settings.scheduler)
        kw = dict(num_steps=settings.steps, precision=precision, device=device, channels_last=channels_last,
                  guidance_scale=settings.guidance_scale, conditioning_scale=settings.conditioning_scale,
                  attribute_guidance=settings.attribute_guidance, lesion_guidance=settings.lesion_guidance,
                  lesion_channels=self.lesion_channels if settings.lesion_guidance else None)
        shape = (len(generators), *self.card.sample_shape)
        if self.codec is None:
            return sample(net, scheduler, shape, generators, cond=cond, known=known, keep=keep, blend=blend, **kw)
        region = {}
        if known is not None:
            region = dict(known=self.codec.encode(known).cpu(), composite=False,
                          keep=1 - max_pool2d(1 - keep, self.card.factor))
        z = sample(net, scheduler, shape, generators, cond=cond, clip=False, **region, **kw)
        if not decode:
            return z
        x = self.codec.decode(z).cpu()
        return composite_region(x, known, blend).cpu() if known is not None else x
