"""The one place where ``maskray serve`` calls into model loading, sampling and generation.

Everything else in the serve package works with label maps, images and seeds; only this module knows where a
model is loaded and sampled (:class:`maskray.diffusion.model.MaskModel`), how a condition is built
(:mod:`maskray.diffusion.conditioning`) and how ``maskray generate`` turns its options into a draw, whole or
region-preserving (:mod:`maskray.pipelines.generate`), so a move of those parts is followed here alone.

Each seed is drawn as a batch of one, so an image depends on its seed, mask and settings only, never on how
many seeds were asked for at once.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from maskray.data.dataset import Dataset
from maskray.diffusion.conditioning import mask_condition
from maskray.diffusion.model import DEFAULT_SAMPLER, MaskModel
from maskray.diffusion.sampling import SCHEDULERS, check_scheduler_name
from maskray import distributed
from maskray.errors import MaskrayError
from maskray.pipelines.generate import SYNTHETIC_TEXT, GenerateConfig, condition_mapping, edit_region

SCHEDULER_NAMES = tuple(SCHEDULERS)
SYNTHETIC_PNG_TEXT = dict(SYNTHETIC_TEXT)  # how generated PNGs are marked synthetic
# scheduler, steps, guidance, precision, channels_last, inpaint margin (generate leaves the sampler unset so that a
# model card may name its own; the page starts from generate's default sampler)
DEFAULTS = GenerateConfig(scheduler=DEFAULT_SAMPLER[0], steps=DEFAULT_SAMPLER[1], guidance_scale="1")


@dataclass(frozen=True)
class Request:
    """One generation: a label map at the model's size and how to sample it.

    ``label``: int64 ``(H, W)`` with the data set's label values. ``known``/``old_label``: the real image
    float32 ``(1, H, W)`` in ``[-1, 1]`` and its own label map, for the region-preserving mode (both
    ``None`` for a whole new image).
    """

    label: torch.Tensor
    seeds: tuple[int, ...]
    scheduler: str = DEFAULTS.scheduler
    steps: int = DEFAULTS.steps
    guidance_scale: float = 1.0
    known: torch.Tensor | None = None
    old_label: torch.Tensor | None = None
    margin: int = DEFAULTS.inpaint_margin


class Engine:
    """A stage-2 model loaded once, generating for label maps of the data set it serves."""

    def __init__(self, run: str | Path, dataset: Dataset):
        self.run = Path(run)
        self.model = MaskModel.load(self.run, need_controlnet=True)
        card = self.model.card
        self.image_size = int(card.image_size)
        self.labels = dict(card.labels)
        self.mapping = condition_mapping(card, dataset, str(self.run))
        self.device = distributed.device()
        self.defaults = replace(DEFAULTS, precision=distributed.resolve_precision(DEFAULTS.precision, self.device))
        self.kernels = self.model.prepare(self.device, self.defaults.precision, self.defaults.channels_last,
                                          self.defaults.fused_kernels)
        self._lock = threading.Lock()

    @property
    def record(self) -> dict:
        """What identifies the model in every output (weight hashes and training step, never a path), and which
        sampling kernels ran."""
        return {**self.model.record, "kernels": self.kernels}

    @property
    def default_guidance(self) -> float:
        """The mask guidance the model card asks for (a latent mask model: 1.5), else 1, as `generate` uses."""
        return self.model.default_guidance

    def check_scheduler(self, name: str) -> None:
        """Fail a request with an unknown sampler when it is submitted, not when its turn comes."""
        check_scheduler_name(name)

    def generate(self, req: Request, progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
        """float32 ``(N, 1, H, W)`` in ``[-1, 1]``, one image per seed; ``progress(done, total)`` per step."""
        size = self.image_size
        if tuple(req.label.shape) != (size, size):
            raise MaskrayError(f"label map is {tuple(req.label.shape)} px; the model works at {size} px")
        total, done = req.steps * len(req.seeds), [0]

        def tick() -> None:
            done[0] += 1
            if progress is not None:
                progress(min(done[0], total), total)

        kw = {"cond": mask_condition(req.label[None], self.mapping, size)}
        if req.known is not None:
            keep, blend = edit_region(req.label.numpy(), req.old_label.numpy(), req.margin)
            kw.update(known=req.known[None], keep=_image(keep), blend=_image(blend))
        settings = self.model.sampler_settings(req.scheduler, req.steps, req.guidance_scale,
                                               self.defaults.conditioning_scale, self.defaults.attribute_guidance)
        run = dict(precision=self.defaults.precision, device=self.device, channels_last=self.defaults.channels_last,
                   on_step=tick, **kw)
        with self._lock:
            return torch.cat([self.model.sample([torch.Generator().manual_seed(int(s))], settings=settings, **run)
                              for s in req.seeds])


def _image(x: np.ndarray) -> torch.Tensor:
    """float ``(H, W)`` -> ``(1, 1, H, W)``."""
    return torch.from_numpy(x)[None, None]
