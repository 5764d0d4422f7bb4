"""The latent autoencoder: a diffusers ``AutoencoderKL`` sized for a CPU, and the codec that the latent path uses.

Latent diffusion (Rombach et al., CVPR 2022, §3) trains the diffusion model on the latents of a KL-regularised
autoencoder instead of on pixels. With a 4x autoencoder a 256 px radiograph becomes a 64 x 64 latent, the size
that maskray's pixel-space model handles on a CPU. The latents are multiplied by a *scaling factor*
(1 / standard deviation of the latents, measured on training data, §4.3.2 and Appendix G of the paper) so that
the diffusion model sees data of unit variance.

A codec folder holds::

    config.json                         AutoencoderKL config (save_pretrained)
    diffusion_pytorch_model.safetensors weights (save_pretrained, safetensors only)
    maskray_autoencoder.json            AutoencoderConfig, scaling factor, weight hash, training summary

Loading refuses pickles: a folder that holds a ``.bin``/``.pkl``/``.pt``/``.pth``/``.ckpt`` file is an error.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL

from maskray.diffusion.fused import prepare_for_sampling
from maskray.errors import MaskrayError
from maskray.files import atomic_write, read_json, staged_output
from maskray.provenance import to_jsonable

CARD_FILE = "maskray_autoencoder.json"
PICKLE_SUFFIXES = (".bin", ".pkl", ".pickle", ".pt", ".pth", ".ckpt")


@dataclass(frozen=True)
class AutoencoderConfig:
    """Shape of the autoencoder. ``factor`` is the spatial downsampling (4: 256 px -> 64 x 64 latent).

    ``block_out_channels`` lists channels per resolution level, finest first; an autoencoder with factor
    ``f`` has ``log2(f) + 1`` levels, and when fewer channels are given the last one repeats for the
    deeper levels (``(8, 16)`` at factor 4 is ``(8, 16, 16)``).
    """

    factor: int = 4
    latent_channels: int = 4
    block_out_channels: tuple[int, ...] = (32, 64, 64)
    layers_per_block: int = 1
    norm_num_groups: int = 8
    mid_block_attention: bool = False  # self-attention over a 64 x 64 latent costs more than the rest on a CPU

    def __post_init__(self) -> None:
        if self.factor not in (4, 8):
            raise MaskrayError(f"autoencoder factor {self.factor} is not allowed (allowed: 4, 8)")
        if self.latent_channels < 1:
            raise MaskrayError(f"latent channels must be at least 1, got {self.latent_channels}")
        if not self.block_out_channels or len(self.block_out_channels) > self.levels:
            raise MaskrayError(f"block channels {self.block_out_channels}: give 1 to {self.levels} values for "
                               f"factor {self.factor}")
        bad = [c for c in self.block_out_channels if c < 1 or c % self.norm_num_groups]
        if bad:
            raise MaskrayError(f"block channels {bad} are not multiples of norm groups {self.norm_num_groups}")

    @property
    def levels(self) -> int:
        return int(math.log2(self.factor)) + 1

    def channels(self) -> tuple[int, ...]:
        """Channels of every level (the last given value repeated to ``levels`` entries)."""
        c = tuple(self.block_out_channels)
        return c + (c[-1],) * (self.levels - len(c))

    @classmethod
    def from_dict(cls, d: dict, where: str) -> AutoencoderConfig:
        try:
            d = dict(d)
            d["block_out_channels"] = tuple(d["block_out_channels"])
            return cls(**d)
        except (TypeError, KeyError) as e:
            raise MaskrayError(f"{where}: autoencoder config is not valid ({e})") from None


def build_autoencoder(cfg: AutoencoderConfig) -> AutoencoderKL:
    """A freshly initialised single-channel ``AutoencoderKL`` (uses the global RNG: seed before calling)."""
    ch = cfg.channels()
    return AutoencoderKL(
        in_channels=1, out_channels=1, latent_channels=cfg.latent_channels, block_out_channels=ch,
        down_block_types=("DownEncoderBlock2D",) * len(ch), up_block_types=("UpDecoderBlock2D",) * len(ch),
        layers_per_block=cfg.layers_per_block, norm_num_groups=cfg.norm_num_groups,
        mid_block_add_attention=cfg.mid_block_attention, scaling_factor=1.0, force_upcast=False,
    )


def state_hash(module: torch.nn.Module) -> str:
    """SHA-256 of a module's tensors (names, dtypes, shapes and bytes), independent of how they were stored."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        shape = tuple(t.shape)
        t = t.detach().cpu().contiguous().reshape(-1)  # flat: a channels_last 1x1 kernel is "contiguous" too
        h.update(f"{name}|{t.dtype}|{shape}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class LatentCodec:
    """An ``AutoencoderKL`` with its measured scaling factor: images ``(N, 1, H, W)`` in ``[-1, 1]`` <->
    scaled latents ``(N, C, H/f, W/f)``. ``encode`` and ``decode`` are differentiable; wrap them in
    ``torch.no_grad()`` (and put ``vae`` in eval mode) for inference."""

    def __init__(self, vae: AutoencoderKL, config: AutoencoderConfig, scaling_factor: float = 1.0,
                 summary: dict | None = None):
        self.vae = vae
        self.config = config
        self.scaling_factor = float(scaling_factor)
        self.summary = dict(summary or {})
        self.decode_bf16 = False  # set by prepare_for_decoding

    @classmethod
    def new(cls, config: AutoencoderConfig) -> LatentCodec:
        return cls(build_autoencoder(config), config)

    @property
    def factor(self) -> int:
        return self.config.factor

    def weights_hash(self) -> str:
        return state_hash(self.vae)

    def to(self, device: torch.device | str) -> LatentCodec:
        self.vae.to(device)
        return self

    def _device(self) -> torch.device:
        return next(self.vae.parameters()).device

    def encode(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Scaled latents of float ``(N, 1, H, W)`` images in ``[-1, 1]`` (H, W divisible by the factor).

        The posterior mean, or a sample of the posterior when ``generator`` is given.
        """
        if x.ndim != 4 or x.shape[1] != 1 or x.shape[-1] % self.factor or x.shape[-2] % self.factor:
            raise ValueError(f"expected (N, 1, H, W) with H, W divisible by {self.factor}, got {tuple(x.shape)}")
        post = self.vae.encode(x.to(self._device(), torch.float32)).latent_dist
        z = post.mode() if generator is None else post.sample(generator=generator)
        return z * self.scaling_factor

    def prepare_for_decoding(self, device: torch.device, precision: str, channels_last: bool,
                             fused: bool = True) -> str:
        """Ready the decoder for generation only, as :func:`maskray.diffusion.fused.prepare_for_sampling` readies
        the diffusion model: with ``precision`` bf16 it then decodes under bf16 autocast (2.8x faster than fp32 at
        256 px on this CPU; the 8-bit images stay within a grey level or two of fp32 decoding,
        benchmarks/bench_fused_generate.py). Returns which kernels run."""
        self.vae.to(device)
        self.decode_bf16 = precision == "bf16"
        return prepare_for_sampling(self.vae.decoder, device, precision, channels_last, fused)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images float ``(N, 1, H, W)`` clamped to ``[-1, 1]`` from scaled latents ``(N, C, h, w)``."""
        device = self._device()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.decode_bf16):
            x = self.vae.decode(z.to(device, torch.float32) / self.scaling_factor).sample
        return x.float().clamp(-1.0, 1.0)

    @torch.no_grad()
    def measure_scaling_factor(self, images: torch.Tensor, batch_size: int = 16) -> float:
        """Set and return ``1 / std`` of the (unscaled) posterior-mean latents of ``images`` ``(N, 1, H, W)``."""
        was_training = self.vae.training
        self.vae.eval()
        zs = [self.vae.encode(images[i:i + batch_size].to(self._device(), torch.float32)).latent_dist.mode()
              for i in range(0, len(images), batch_size)]
        self.vae.train(was_training)
        std = float(torch.cat(zs).float().std())
        if not math.isfinite(std) or std <= 0:
            raise MaskrayError(f"latent standard deviation is {std}; cannot measure a scaling factor")
        self.scaling_factor = 1.0 / std
        return self.scaling_factor

    def card(self) -> dict:
        return {"config": to_jsonable(self.config), "scaling_factor": self.scaling_factor,
                "weights_sha256": self.weights_hash(), "summary": to_jsonable(self.summary)}

    def save(self, folder: str | os.PathLike) -> Path:
        """Write the codec folder (written beside it under a temporary name, then renamed into place)."""
        folder = Path(folder)
        if folder.exists() and any(folder.iterdir()):
            raise MaskrayError(f"{folder}: already holds files; will not overwrite an autoencoder")
        with staged_output(folder) as tmp:
            self.vae.save_pretrained(tmp, safe_serialization=True)
            atomic_write(tmp / CARD_FILE, json.dumps(self.card(), indent=2))
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike) -> LatentCodec:
        """Rebuild a codec from its folder (safetensors only); checks the config and the weight hash."""
        folder = Path(folder)
        if not folder.is_dir():
            raise MaskrayError(f"{folder}: no such autoencoder folder")
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
        if pickles:
            raise MaskrayError(f"{folder}: holds pickle files ({', '.join(pickles)}); maskray loads safetensors only")
        card_path = folder / CARD_FILE
        if not card_path.is_file():
            raise MaskrayError(f"{folder}: not a maskray autoencoder (missing {CARD_FILE}); train one with "
                               f"'maskray train autoencoder'")
        card = read_json(card_path, what="autoencoder card")
        try:
            config = AutoencoderConfig.from_dict(card["config"], str(card_path))
            scaling = float(card["scaling_factor"])
            expected = card["weights_sha256"]
        except (KeyError, TypeError, ValueError) as e:
            raise MaskrayError(f"{card_path}: corrupt card ({e.__class__.__name__}: {e})") from None
        vae = _load_vae(folder)
        reference = build_autoencoder(config).state_dict()
        got = vae.state_dict()
        if set(got) != set(reference) or any(got[k].shape != reference[k].shape for k in got):
            raise MaskrayError(f"{folder}: weights do not match the autoencoder config in {CARD_FILE}")
        codec = cls(vae.eval(), config, scaling, card.get("summary"))
        if codec.weights_hash() != expected:
            raise MaskrayError(f"{folder}: weights do not match the hash in {CARD_FILE} (changed after saving?)")
        return codec


def _load_vae(folder: Path) -> AutoencoderKL:
    """``from_pretrained`` with safetensors only; every failure (missing file or keys) as one line."""
    import warnings

    from diffusers.utils import logging as dlogging

    level = dlogging.get_verbosity()
    dlogging.set_verbosity_error()  # diffusers logs missing keys as warnings; we turn them into an error below
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            vae, info = AutoencoderKL.from_pretrained(folder, use_safetensors=True, output_loading_info=True,
                                                      low_cpu_mem_usage=False)
    except (OSError, ValueError, RuntimeError, EnvironmentError) as e:
        raise MaskrayError(f"{folder}: cannot load autoencoder weights ({str(e).strip().splitlines()[0]})") from None
    finally:
        dlogging.set_verbosity(level)
    problems = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if problems:
        k, v = next(iter(problems.items()))
        raise MaskrayError(f"{folder}: {k.replace('_', ' ')} in the weights, e.g. {list(v)[:2]}")
    return vae
