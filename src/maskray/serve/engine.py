"""The one place where ``maskray serve`` calls into model loading, sampling and generation.

Everything else in the serve package works with label maps, images and seeds; only this module knows
where the model is loaded (``maskray.models.checkpoint``), how a sampler is made and run
(``maskray.pipelines.sampling``) and how the region-preserving mode picks its region
(``maskray.pipelines.generate``), so a move of those parts is followed here alone.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from maskray.data.layout import Dataset, one_hot
from maskray.errors import MaskrayError
from maskray.models.checkpoint import load_model
from maskray.pipelines.generate import SYNTHETIC_TEXT, GenerateConfig, _condition_mapping, _region
from maskray.pipelines.sampling import SCHEDULERS, make_scheduler, sample

SCHEDULER_NAMES = tuple(SCHEDULERS)
SYNTHETIC_PNG_TEXT = dict(SYNTHETIC_TEXT)  # how generated PNGs are marked synthetic
DEFAULTS = GenerateConfig()  # scheduler, steps, guidance, precision, channels_last, inpaint margin


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
    guidance_scale: float = DEFAULTS.guidance_scale
    known: torch.Tensor | None = None
    old_label: torch.Tensor | None = None
    margin: int = DEFAULTS.inpaint_margin


class _Counted(torch.nn.Module):
    """The model, calling ``tick`` after each evaluation (one per sampler step), to report progress."""

    def __init__(self, model: torch.nn.Module, tick: Callable[[], None]):
        super().__init__()
        self.model, self.tick = model, tick

    def forward(self, *args, **kwargs):
        out = self.model(*args, **kwargs)
        self.tick()
        return out


class Engine:
    """A stage-2 run loaded once, generating for label maps of the data set it serves."""

    def __init__(self, run: str | Path, dataset: Dataset):
        self.run = Path(run)
        self.model, self.meta = load_model(self.run, need_controlnet=True)
        self.image_size = int(self.meta["image_size"])
        self.mapping = _condition_mapping(self.meta, dataset, str(self.run))
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(self.device)
        if DEFAULTS.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self._lock = threading.Lock()

    @property
    def record(self) -> dict:
        """What identifies the model in every output (weight hashes, never a path)."""
        return {k: self.meta.get(k) for k in ("stage", "image_size", "unet_sha256", "controlnet_sha256")}

    def check_scheduler(self, name: str) -> None:
        make_scheduler(name, self.meta["scheduler_config"])

    def generate(self, req: Request, progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
        """float32 ``(N, 1, H, W)`` in ``[-1, 1]``, one image per seed; ``progress(done, total)`` per step."""
        size = self.image_size
        if tuple(req.label.shape) != (size, size):
            raise MaskrayError(f"label map is {tuple(req.label.shape)} px; the model works at {size} px")
        n, total = len(req.seeds), req.steps
        done = [0]

        def tick() -> None:
            done[0] += 1
            if progress is not None:
                progress(min(done[0], total), total)

        cond = one_hot(req.label, [-1 if v is None else v for v in self.mapping])[None].expand(n, -1, -1, -1)
        kw = {}
        if req.known is not None:
            keep, blend = _region(req.label.numpy(), req.old_label.numpy(), req.margin)
            kw = dict(known=req.known[None].expand(n, -1, -1, -1),
                      keep=torch.from_numpy(keep)[None, None].expand(n, -1, -1, -1),
                      blend=torch.from_numpy(blend)[None, None].expand(n, -1, -1, -1))
        gens = [torch.Generator().manual_seed(int(s)) for s in req.seeds]
        with self._lock:
            scheduler = make_scheduler(req.scheduler, self.meta["scheduler_config"])
            return sample(_Counted(self.model, tick), scheduler, (n, 1, size, size), gens, cond=cond.contiguous(),
                          num_steps=req.steps, guidance_scale=req.guidance_scale, precision=DEFAULTS.precision,
                          device=self.device, channels_last=DEFAULTS.channels_last, **kw)
