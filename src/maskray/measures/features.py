"""A feature network that maskray trains itself, self-supervised, on real radiographs: no download.

Why: realism scores (FID, KID, precision/recall) are only as good as the feature space they live in. A
segmenter's features are built to ignore texture, and ImageNet networks are neither available offline nor
made for radiographs. This network is a denoising, masked autoencoder (Vincent et al. 2008; He et al. 2022's
masking on a convolutional encoder): from an image with random square patches blanked out and Gaussian noise
added it reconstructs the clean image, so its encoder must represent both anatomy (to fill the holes) and
texture (to tell noise from detail). It is not a segmenter and sees no masks.

- :meth:`FeatureNet.features`: the encoder's activations at each of its stages (for a perceptual loss).
- :meth:`FeatureNet.embed`: per stage, the spatial mean and standard deviation of every channel, concatenated
  (``D = 2 * sum(widths)``); the standard deviations are texture energy, as in Gram-matrix style statistics.
- :meth:`FeatureNet.save` / :meth:`FeatureNet.load`: ``feature_net.safetensors`` plus ``feature_net.json``;
  loading reads tensors only and never unpickles.

Images are float ``(N, 1, H, W)`` in ``[-1, 1]`` with ``H`` and ``W`` multiples of ``2 ** len(widths)``.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from maskray.errors import MaskrayError

WEIGHTS = "feature_net.safetensors"
CONFIG = "feature_net.json"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class FeatureNetConfig:
    """What builds the network and how it was trained (saved beside the weights)."""

    widths: tuple[int, ...] = (16, 32, 64, 128)
    image_size: tuple[int, int] = (64, 64)
    steps: int = 400
    batch_size: int = 16
    lr: float = 2e-3
    seed: int = 0
    mask_fraction: float = 0.25  # share of the image blanked out, in square patches of side/8
    noise_std: float = 0.1  # Gaussian noise added to the input, in image units of [-1, 1]
    objective: str = "masked denoising reconstruction (MSE to the clean image)"
    n_images: int = 0
    final_loss: float = float("nan")


def _block(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.GroupNorm(min(8, cout), cout), nn.SiLU(),
                         nn.Conv2d(cout, cout, 3, 1, 1), nn.GroupNorm(min(8, cout), cout), nn.SiLU())


class FeatureNet(nn.Module):
    """Encoder (stride-2 stages) and a light decoder used only for training."""

    def __init__(self, config: FeatureNetConfig = FeatureNetConfig()):
        super().__init__()
        self.config = config
        w = list(config.widths)
        self.encoder = nn.ModuleList(_block(c_in, c_out, 2) for c_in, c_out in zip([1] + w[:-1], w))
        ups = []
        for c_in, c_out in zip(w[::-1], w[::-1][1:] + [w[0]]):
            ups.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), _block(c_in, c_out, 1)))
        self.decoder = nn.ModuleList(ups)
        self.head = nn.Conv2d(w[0], 1, 3, 1, 1)

    def _check(self, x: torch.Tensor) -> None:
        k = 2 ** len(self.config.widths)
        if x.ndim != 4 or x.shape[1] != 1 or x.shape[-2] % k or x.shape[-1] % k:
            raise ValueError(f"expected (N, 1, H, W) images with H, W multiples of {k}, got {tuple(x.shape)}")

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Encoder activations ``[(N, widths[i], H / 2^(i+1), W / 2^(i+1))]`` of ``(N, 1, H, W)`` images.
        Differentiable (use it inside a loss); wrap in ``torch.no_grad()`` to measure."""
        self._check(x)
        out = []
        h = x.float()
        for stage in self.encoder:
            h = stage(h)
            out.append(h)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction ``(N, 1, H, W)`` of ``(N, 1, H, W)`` images (the training objective's output)."""
        h = self.features(x)[-1]
        for up in self.decoder:
            h = up(h)
        return self.head(h)

    @torch.no_grad()
    def embed(self, x: torch.Tensor, batch: int = 64) -> torch.Tensor:
        """``(N, 1, H, W)`` in ``[-1, 1]`` -> float32 ``(N, 2 * sum(widths))``: per stage, channel means then
        channel standard deviations over space."""
        was = self.training
        self.eval()
        out = []
        for i in range(0, x.shape[0], batch):
            parts = []
            for f in self.features(x[i:i + batch]):
                parts += [f.mean(dim=(-2, -1)), f.std(dim=(-2, -1))]
            out.append(torch.cat(parts, 1))
        self.train(was)
        return torch.cat(out) if out else torch.empty(0, 2 * sum(self.config.widths))

    def save(self, folder: str | os.PathLike) -> Path:
        """Write ``feature_net.safetensors`` and ``feature_net.json`` into ``folder``."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, str(folder / WEIGHTS))
        cfg = {"format_version": FORMAT_VERSION, **asdict(self.config)}
        (folder / CONFIG).write_text(json.dumps(cfg, indent=2, default=float))
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "FeatureNet":
        """Rebuild from :meth:`save`'s files (tensors only; nothing is unpickled)."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        folder = Path(folder)
        cpath, wpath = folder / CONFIG, folder / WEIGHTS
        if not cpath.is_file() or not wpath.is_file():
            raise MaskrayError(f"{folder}: not a feature network folder (needs {CONFIG} and {WEIGHTS})")
        try:
            raw = json.loads(cpath.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise MaskrayError(f"{cpath}: not valid JSON ({e})") from None
        if not isinstance(raw, dict) or raw.pop("format_version", None) != FORMAT_VERSION:
            raise MaskrayError(f"{cpath}: not a feature network config of format version {FORMAT_VERSION}")
        known = set(FeatureNetConfig.__dataclass_fields__)
        if set(raw) - known:
            raise MaskrayError(f"{cpath}: unknown keys {sorted(set(raw) - known)}")
        try:
            cfg = FeatureNetConfig(**{**raw, "widths": tuple(raw["widths"]), "image_size": tuple(raw["image_size"])})
            net = cls(cfg)
        except (KeyError, TypeError, ValueError) as e:
            raise MaskrayError(f"{cpath}: invalid feature network config ({e})") from None
        try:
            state = load_file(str(wpath))
            net.load_state_dict(state, strict=True)
        except (SafetensorError, RuntimeError, OSError) as e:
            raise MaskrayError(f"{wpath}: weights do not fit the config ({str(e).splitlines()[0]})") from None
        return net.eval()


def _corrupt(x: torch.Tensor, cfg: FeatureNetConfig, gen: torch.Generator) -> torch.Tensor:
    """Blank random patches (to 0, mid-grey) and add Gaussian noise."""
    n, _, h, w = x.shape
    ph, pw = max(1, h // 8), max(1, w // 8)
    grid = torch.rand(n, 1, -(-h // ph), -(-w // pw), generator=gen) < cfg.mask_fraction
    keep = ~grid.repeat_interleave(ph, 2).repeat_interleave(pw, 3)[..., :h, :w]
    return x * keep + cfg.noise_std * torch.randn(x.shape, generator=gen)


def train_feature_net(images: torch.Tensor, steps: int = 400, seed: int = 0, progress: bool = True,
                      batch_size: int = 16, widths: tuple[int, ...] = (16, 32, 64, 128)) -> FeatureNet:
    """Train a :class:`FeatureNet` on real images ``(N, 1, H, W)`` in ``[-1, 1]`` for ``steps`` steps of
    masked denoising reconstruction, seeded by ``seed`` (weights, batches, masks and noise). Returns it in
    eval mode, with the final loss in its config."""
    from tqdm.auto import tqdm

    if images.ndim != 4 or images.shape[1] != 1 or images.shape[0] < 1:
        raise ValueError(f"expected (N, 1, H, W) images with N >= 1, got {tuple(images.shape)}")
    cfg = FeatureNetConfig(widths=tuple(widths), image_size=tuple(images.shape[-2:]), steps=steps,
                           batch_size=batch_size, seed=seed, n_images=int(images.shape[0]))
    torch.manual_seed(seed)
    net = FeatureNet(cfg)
    net._check(images[:1])
    gen = torch.Generator().manual_seed(seed + 1)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=1e-4)
    warm = max(1, steps // 10)  # linear warm-up, then cosine decay to 0
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / max(steps, 1))))
    x_all = images.float()
    bs = min(batch_size, x_all.shape[0])
    loss = torch.tensor(float("nan"))
    net.train()
    for _ in tqdm(range(steps), desc="feature net (self-supervised)", leave=False, disable=not progress or None):
        x = x_all[torch.randint(0, x_all.shape[0], (bs,), generator=gen)]
        flip = torch.rand(bs, generator=gen) < 0.5
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        loss = F.mse_loss(net(_corrupt(x, cfg, gen)), x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    net.config = FeatureNetConfig(**{**asdict(cfg), "final_loss": float(loss.detach())})
    return net.eval()
