"""Validation images over training: fixed masks and fixed noise, sampled every N steps, laid out as one strip
(rows: cases; columns: mask, real image, then one column per validation step), as in the seed paper's Figure 2."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from maskray.diffusion.conditioning import one_hot
from maskray.diffusion.model import MaskModel, SamplerSettings
from maskray.files import atomic_path

PALETTE = np.array([[0, 0, 0], [70, 130, 255], [255, 80, 80], [80, 220, 120], [255, 200, 40], [200, 90, 255],
                    [40, 220, 220], [255, 140, 0]], dtype=np.uint8)


def colorize(label: np.ndarray) -> np.ndarray:
    """int ``(H, W)`` label map -> uint8 RGB ``(H, W, 3)``."""
    return PALETTE[np.asarray(label) % len(PALETTE)]


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """float ``(1, H, W)`` or ``(H, W)`` in ``[-1, 1]`` -> uint8 ``(H, W)``."""
    x = x.squeeze().float().clamp(-1, 1)
    return ((x + 1) * 127.5).round().to(torch.uint8).numpy()


def grid_image(columns: list[list[np.ndarray]], titles: list[str], scale: int = 2, pad: int = 2) -> Image.Image:
    """Lay out images (each uint8 ``(H, W)`` or ``(H, W, 3)``) column by column, with a title row."""
    rows = len(columns[0])
    h, w = columns[0][0].shape[:2]
    h, w = h * scale, w * scale
    head = 14
    canvas = Image.new("RGB", (len(columns) * (w + pad) + pad, head + rows * (h + pad) + pad), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for c, (col, title) in enumerate(zip(columns, titles)):
        x0 = pad + c * (w + pad)
        draw.text((x0 + 1, 1), title[: max(3, w // 6)], fill=(0, 0, 0))
        for r, img in enumerate(col):
            im = Image.fromarray(img).convert("RGB").resize((w, h), Image.NEAREST)
            canvas.paste(im, (x0, head + pad + r * (h + pad)))
    return canvas


class ValidationStrip:
    def __init__(self, out_dir: Path, arrays, label_values: list[int], n_cases: int, seed: int,
                 sampler_steps: int, precision: str, condition=None, channels_last: bool = False):
        """``condition(labels, images, case_ids)``: the stage's whole condition of the strip's cases (else the
        one-hot mask); ``channels_last``: sample in the memory format the networks train in (the fused kernel's)."""
        self.out_dir = Path(out_dir)
        n = min(n_cases, len(arrays))
        idx = torch.arange(n)
        lab = arrays.batch(idx)[1]
        self.real = arrays.pixels(idx)
        self.labels = lab
        self.cond = one_hot(lab, label_values) if lab is not None and label_values else None
        if condition is not None:
            self.cond = condition(lab, self.real, list(arrays.case_ids[:n]))
        self.seeds = [seed * 1000 + i for i in range(n)]
        self.sampler_steps = sampler_steps
        self.precision = precision
        self.channels_last = channels_last
        self.columns: list[tuple[int, torch.Tensor]] = []

    def add(self, model: MaskModel, step: int, conditional: bool, device) -> None:
        """One column: the model in training (its networks as they are now) drawn with DDIM for the fixed seeds."""
        gens = [torch.Generator().manual_seed(s) for s in self.seeds]
        imgs = model.sample(gens, self.cond if conditional else None, SamplerSettings("ddim", self.sampler_steps),
                            precision=self.precision, device=device, channels_last=self.channels_last)
        self.columns.append((step, imgs))
        self.save()

    def save(self) -> Path | None:
        if not self.columns:
            return None
        self.out_dir.mkdir(parents=True, exist_ok=True)
        cols, titles = [], []
        if self.labels is not None:
            cols.append([colorize(lab.numpy()) for lab in self.labels])
            titles.append("mask")
        cols.append([to_uint8(x) for x in self.real])
        titles.append("real")
        for step, imgs in self.columns:
            cols.append([to_uint8(x) for x in imgs])
            titles.append(f"{step}")
        path = self.out_dir / "strip.png"
        with atomic_path(path) as tmp:
            grid_image(cols, titles).save(tmp)
        return path
